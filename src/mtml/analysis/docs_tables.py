"""Result tables of README.md and docs/*.md, generated from the committed metrics of a study.

A marked block in a markdown file

    <!-- results:<study> table=summary|compare|tasks|mtl|file|published [path=P] [experiment=E] [split=S] [dataset=D] [task=T] [method=M] -->
    (generated: leave it to `python -m mtml docs-tables`)
    <!-- /results -->

is rewritten from `metrics/<study>/summary.json` (table=summary: mean over seeds with the
combined CI, between-seed sd, each seed's mean, NIL) or `metrics/<study>/compare.json`
(table=compare: the paired differences with their CI and verdict; `versus=M` gives every
method against M, pairs stored as M − X read as X − M; table=tasks, for multi-task studies:
the same comparisons against `versus=M` as one table per split, a row per method and a column
per task) or, table=mtl, `metrics/<study>/analysis/mtl-table/table.json` (Delta-MTL and
Delta-Acc against the single-task baseline with their CI and verdict, one table per experiment
and split) or, table=file path=P, the markdown file metrics/<study>/P that an analysis wrote,
verbatim (e.g. path=analysis/paper-table/paper_table.md) or, table=published, the `published:`
block of the study's params file (configs/<study>.yaml; params.yaml for `default`): the
papers' numbers a preset sets next to ours, documented from the one place they are kept, so a
preset need not have been run. The other options keep the rows
whose column equals the value. `docs-tables --check` and tests/test_docs_tables.py fail when a block
differs from what the files give, so a documented number cannot drift from the committed
results.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mtml.analysis.compare import ALL_SEEDS
from mtml.errors import UserError
from mtml.utils import write_text

# The documents that carry result blocks (relative to the repository root).
DOCUMENTS = ("README.md", "docs/*.md")
# Markers sit at the start of a line (a marker quoted in prose, e.g. in backticks, is not one).
BLOCK = re.compile(r"^<!-- results:(?P<study>[\w.-]+)(?P<options>[^>\n]*?)\s*-->\n(?P<body>.*?)^<!-- /results -->",
                   re.DOTALL | re.MULTILINE)
OPENING = re.compile(r"^<!-- results:", re.MULTILINE)
TABLES = ("summary", "compare", "tasks", "mtl", "file", "published")
MTL_TABLE = Path("analysis") / "mtl-table" / "table.json"  # under metrics/<study>/
FILTERS = ("experiment", "split", "dataset", "task", "method", "versus")
GROUP = ("experiment", "split", "dataset", "task")


def _options(text: str, where: str) -> dict:
    options = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise UserError(f"{where}: option {item!r} is not key=value (e.g. table=summary split=test)")
        if key not in ("table", "path") and key not in FILTERS:
            raise UserError(f"{where}: unknown option {key!r}; use table=, path=, {'=, '.join(FILTERS)}=")
        options[key] = value
    table = options.setdefault("table", "summary")
    if table not in TABLES:
        raise UserError(f"{where}: table={table} is not one of {', '.join(TABLES)}")
    if table in ("summary", "mtl", "published") and "versus" in options:
        raise UserError(f"{where}: versus= only applies to table=compare and table=tasks")
    if table == "tasks" and "versus" not in options:
        raise UserError(f"{where}: table=tasks compares every method with one: add versus=<method>")
    if (table == "file") != ("path" in options) or (table == "file" and set(options) - {"table", "path"}):
        raise UserError(f"{where}: table=file takes one option, path=<a .md file under metrics/<study>/> "
                        "(e.g. path=analysis/paper-table/paper_table.md), and path= needs table=file")
    return options


def _file(root: Path, study: str, relative: str, where: str) -> str:
    """table=file: a markdown table an analysis wrote, verbatim but for its headings: the title
    line is dropped (the document around the block names it) and other headings become bold
    lines, so the file's sections do not become sections of the document."""
    folder = root / "metrics" / study
    path = folder / relative
    if not relative.endswith(".md") or Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise UserError(f"{where}: path={relative} must be a relative .md file under metrics/{study}/")
    if not path.exists():
        raise UserError(f"{where}: {path.relative_to(root)} is missing; run the study "
                        f"({_run_hint(root, study)}) and commit its metrics")
    lines = path.read_text().strip().splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    lines = [f"**{line.lstrip('#').strip()}**" if re.match(r"#+ ", line) else line for line in lines]
    return "\n".join(lines).strip()


def _rows(root: Path, study: str, table: str, where: str) -> list[dict]:
    if table == "mtl":
        return _mtl_rows(root, study, where)
    if table == "published":
        return _published_rows(root, study, where)
    table = "compare" if table == "tasks" else table
    path = root / "metrics" / study / f"{table}.json"  # Layout.summary(): metrics/<study>/<file>
    if not path.exists():
        raise UserError(f"{where}: {path.relative_to(root)} is missing; run the study "
                        f"({_run_hint(root, study)}) and commit its metrics")
    try:
        return list(json.loads(path.read_text()).values())
    except (ValueError, AttributeError) as err:
        raise UserError(f"{where}: {path.relative_to(root)} is not a keyed JSON table ({err}); "
                        "rerun the aggregate stage of the study") from None


def _mtl_rows(root: Path, study: str, where: str) -> list[dict]:
    """The mtl-table analysis' rows, one per experiment x split x method (the method's record
    under `record`, the experiment's summary under `summary`)."""
    path = root / "metrics" / study / MTL_TABLE
    if not path.exists():
        raise UserError(f"{where}: {path.relative_to(root)} is missing; run the study with the mtl-table "
                        f"analysis ({_run_hint(root, study)}) and commit its metrics")
    return [{"experiment": s["experiment"], "split": split, "method": r["method"], "record": r, "summary": s}
            for s in json.loads(path.read_text()) for split in s["splits"] for r in s["methods"]]


def params_file(root: Path, study: str) -> Path:
    """The params file a study's name comes from (mtml.study.study_name, the other way round)."""
    return root / ("params.yaml" if study == "default" else f"configs/{study}.yaml")


def _run_hint(root: Path, study: str) -> str:
    return f"snakemake --cores 2 all --configfile {params_file(root, study).relative_to(root)}"


def _published_rows(root: Path, study: str, where: str) -> list[dict]:
    """The study's `published:` block (schema: compare.PUBLISHED_SCHEMA), one row per
    experiment x method x split, in the file's order."""
    import yaml

    path = params_file(root, study)
    if not path.exists():
        raise UserError(f"{where}: {path.relative_to(root)} is missing; table=published reads the study's params file")
    published = (yaml.safe_load(path.read_text()) or {}).get("published")
    if not published:
        raise UserError(f"{where}: {path.relative_to(root)} has no `published:` block "
                        "(docs/statistics.md, 'Published numbers')")
    return [{"experiment": exp, "method": method, "split": split, "dataset": entry.get("dataset", ""), **entry}
            for exp, methods in published.items() for method, splits in methods.items()
            for split, entry in splits.items()]


def _flipped(row: dict) -> dict:
    """versus − method: the same comparison read the other way round (same p, opposite verdict)."""
    swap = {"better": "worse", "worse": "better"}
    return {**row, "method": row["versus"], "versus": row["method"], "difference": -row["difference"],
            "ci_low": -row["ci_high"], "ci_high": -row["ci_low"], "verdict": swap.get(row["verdict"], row["verdict"])}


def _select(rows: list[dict], options: dict, where: str) -> list[dict]:
    if "versus" in options:  # every method against one: the pairs stored the other way round too
        rows = rows + [_flipped(r) for r in rows if r["method"] == options["versus"]]
    keep = [r for r in rows if all(str(r.get(k, "")) == v for k, v in options.items() if k in FILTERS)]
    if not keep:
        wanted = " ".join(f"{k}={v}" for k, v in options.items() if k in FILTERS)
        raise UserError(f"{where}: no rows match {wanted or 'the block'}; check the names against the study's files")
    return keep


def _groups(rows: list[dict], by: tuple = GROUP) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r.get(c, "") for c in by), []).append(r)
    return out


def _title(key: tuple, first: dict, seeds: int) -> str:
    exp, split, dataset, task = key
    task = f" [{task}]" if task else ""
    setting = f", {first['ways']}-way {first['shots']}-shot" if "ways" in first else ""
    return (f"**{exp} — {split} ({dataset}){task}**{setting}, {first['episodes']} episodes, "
            f"{seeds} training seed{'s' if seeds != 1 else ''}")


def _num(r: dict, key: str, fmt: str = ".2f") -> str:
    v = r.get(key)
    return "" if v is None else format(v, fmt)


def summary_table(rows: list[dict]) -> str:
    """One table per experiment/split/dataset[/task]: the aggregated row of each method (best
    first) with its seeds' means, as summary.md shows them."""
    aggregated = [r for r in rows if r["seed"] == ALL_SEEDS]
    lines = []
    for key, group in _groups(aggregated).items():
        seeds = max(r["seeds"] for r in group)
        lines += [_title(key, group[0], seeds), "",
                  "| method | accuracy (%), mean [combined 95% CI] | between-seed sd | per seed | NIL accuracy (%) |",
                  "|---|---|---|---|---|"]
        for r in sorted(group, key=lambda r: -r["accuracy"]):
            each = ", ".join(f"{s['accuracy']:.2f}" for s in rows if s["seed"] != ALL_SEEDS
                             and all(s.get(c, "") == r.get(c, "") for c in (*GROUP, "method")))
            lines.append(f"| {r['method']} | {r['accuracy']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] | "
                         f"{_num(r, 'seed_std')} | {each} | {_num(r, 'nil_accuracy')} |")
        lines.append("")
    return "\n".join(lines)


def compare_table(rows: list[dict]) -> str:
    """One table per experiment/split/dataset[/task]: method − versus on the same episodes and
    seeds, its 95% CI, the Holm-adjusted combined p and the verdict (compare.md, shortened)."""
    lines = []
    for key, group in _groups(rows).items():
        exp, split, dataset, task = key
        seeds = max(r["seeds"] for r in group)
        lines += [f"**{exp} — {split} ({dataset}){f' [{task}]' if task else ''}**, paired on "
                  f"{group[0]['episodes']} episodes x {seeds} training seed{'s' if seeds != 1 else ''}", "",
                  "| method | versus | difference [95% CI] | p (Holm) | verdict |", "|---|---|---|---|---|"]
        for r in group:
            p = r["p_combined_holm"]
            lines.append(f"| {r['method']} | {r['versus']} | {r['difference']:+.2f} [{r['ci_low']:+.2f}, "
                         f"{r['ci_high']:+.2f}] | {'<0.001' if p < 0.001 else f'{p:.3f}'} | {r['verdict']} |")
        lines.append("")
    return "\n".join(lines)


def tasks_table(rows: list[dict]) -> str:
    """Multi-task studies: one table per experiment/split/dataset, a row per method and a column
    per task, each cell method − versus [95% CI] and the verdict (compare.json's rows)."""
    lines = []
    for (exp, split, dataset), group in _groups(rows, GROUP[:3]).items():
        tasks = list(dict.fromkeys(r.get("task", "") for r in group))
        cells = {(r["method"], r.get("task", "")): r for r in group}
        seeds = max(r["seeds"] for r in group)
        episodes = "/".join(sorted({str(r["episodes"]) for r in group}))
        lines += [f"**{exp} — {split} ({dataset})**, each method − {group[0]['versus']} in points, paired on "
                  f"{episodes} episodes per task x {seeds} training seed{'s' if seeds != 1 else ''}; "
                  "better/worse: Holm-adjusted p < 0.05, else –", "",
                  "| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
        for meth in dict.fromkeys(r["method"] for r in group):
            row = [(f"{c['difference']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}] "
                    f"{c['verdict'] if c['verdict'] in ('better', 'worse') else '–'}") if (c := cells.get((meth, t))) else "" for t in tasks]
            lines.append(f"| {meth} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def mtl_rows_table(rows: list[dict]) -> str:
    """table=mtl: per experiment and split, every method's Delta-MTL and Delta-Acc against the
    single-task baseline [95% CI] with the verdict, and the tasks where it beats the reference."""
    from mtml.analysis.mtl_table import delta_cells

    lines = []
    for (exp, split), group in _groups(rows, ("experiment", "split")).items():
        s = group[0]["summary"]
        ci = next((r["record"]["delta_mtl_ci"].get(split) for r in group if r["record"]["delta_mtl_ci"].get(split)), None)
        size = (f"{ci['seeds']} training seed{'s' if ci['seeds'] != 1 else ''} x "
                f"{'/'.join(sorted({str(n) for n in ci['subtasks'].values()}))} test subtasks per task") if ci else ""
        lines += [f"**{exp} — {split}**, Delta-MTL / Delta-Acc in % against `{s['baseline']}` (single-task), "
                  f"95% CI over {size}; vs 0: Holm-adjusted p < 0.05 across the table; beats ref: tasks "
                  f"where the method beats `{s['reference']}` with the 95% CIs apart", "",
                  "| method | Delta-MTL [95% CI] | vs 0 | Delta-Acc [95% CI] | vs 0 | beats ref |",
                  "|---|---|---|---|---|---|"]
        for row in group:
            r = row["record"]
            cells = " | ".join(delta_cells(r, split, f, r["method"] == s["baseline"]) for f in ("delta_mtl", "delta_mtl_acc"))
            beats = ", ".join(r["beats_reference"].get(split, [])) or ("(reference)" if r["method"] == s["reference"] else "-")
            lines.append(f"| {r['method']} | {cells} | {beats} |")
        lines.append("")
    return "\n".join(lines)


def published_table(rows: list[dict]) -> str:
    """table=published: a row per method and a column per experiment/split[/dataset], each
    cell the published accuracy (± its 95% CI where the paper gives one), then the sources."""
    columns = list(dict.fromkeys((r["experiment"], r["split"], r["dataset"]) for r in rows))
    cells = {(r["method"], (r["experiment"], r["split"], r["dataset"])): r for r in rows}
    head = [f"{exp} {split}" + (f" ({dataset})" if dataset else "") for exp, split, dataset in columns]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(columns) + 1) + "|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        row = [(f"{c['accuracy']:.2f}" + (f" ± {c['ci95']:.2f}" if "ci95" in c else "")
                + (f" (NIL {c['nil_accuracy']:.2f})" if "nil_accuracy" in c else "")) if (c := cells.get((method, k))) else ""
               for k in columns]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    sources = dict.fromkeys(f"{r['source']['paper']}, {r['source']['table']}" for r in rows)
    notes: dict[str, list[str]] = {}
    for r in rows:
        if r.get("note"):
            notes.setdefault(r["note"], []).append(f"{r['experiment']}/{r['method']}")
    lines += ["", "Published accuracy (%) ± 95% CI where given; source: " + "; ".join(sources) + "."]
    lines += [f"Note on {', '.join(dict.fromkeys(where))}: {note.rstrip('.')}." for note, where in notes.items()]
    return "\n".join(lines) + "\n"


def render(root: Path, study: str, options: dict, where: str) -> str:
    table = options["table"]
    if table == "file":
        return _file(root, study, options["path"], where) + "\n\n"
    rows = _select(_rows(root, study, table, where), options, where)
    draw = {"summary": summary_table, "compare": compare_table, "tasks": tasks_table, "mtl": mtl_rows_table,
            "published": published_table}[table]
    # a blank line before the closing marker, so no renderer takes it for part of the table
    return draw(rows) + "\n"


def _where(text: str, name: str, m: re.Match) -> str:
    """How errors name a block: file:line (results:<study>)."""
    return f"{name}:{text.count(chr(10), 0, m.start()) + 1} (results:{m['study']})"


def regenerate(text: str, root: Path, name: str) -> tuple[str, list[str]]:
    """`text` with every results block regenerated, and the blocks that changed ("file:line study")."""
    changed = []

    def block(m: re.Match) -> str:
        where = _where(text, name, m)
        body = render(root, m["study"], _options(m["options"], where), where)
        if body != m["body"]:
            changed.append(where)
        return m.group(0)[: m.start("body") - m.start()] + body + "<!-- /results -->"

    return BLOCK.sub(block, text), changed


def documents(root: Path) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in root.glob(pattern)})


def blocks(root: Path) -> list[tuple[str, dict]]:
    """(study, options) of every results block of the documents, options parsed as render reads them."""
    root = Path(root)
    out = []
    for path in documents(root):
        text, name = path.read_text(), str(path.relative_to(root))
        for m in BLOCK.finditer(text):
            out.append((m["study"], _options(m["options"], _where(text, name, m))))
    return out


def update(root: Path = Path("."), check: bool = False) -> list[str]:
    """Rewrite (or with `check`, only compare) every results block of the documents; returns
    the blocks that differ. A marker without its `<!-- /results -->` is an error."""
    root = Path(root)
    changed = []
    for path in documents(root):
        text = path.read_text()
        name = str(path.relative_to(root))
        if len(OPENING.findall(text)) != len(BLOCK.findall(text)):
            raise UserError(f"{name}: a '<!-- results:<study> ... -->' marker lacks its closing "
                            "'<!-- /results -->' line (or the two are not on lines of their own)")
        new, diff = regenerate(text, root, name)
        changed += diff
        if diff and not check:
            write_text(path, new)
    return changed
