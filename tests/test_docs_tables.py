"""Result tables in README.md and docs/*.md are generated from the committed metrics/<study>/
files (mtml.analysis.docs_tables): the documents in the repository match them (drift test), an
edited number is found and rewritten, and a bad block stops with one line naming it."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from mtml.analysis.docs_tables import blocks, params_file, update
from mtml.cli import main
from mtml.errors import UserError

from pipeline_helpers import ROOT


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    """The documents and metrics as committed (git HEAD), not as a local run left them: the
    README's run command rewrites metrics/default with this machine's numbers (CPUs differ in
    the last bits), after which the working copy no longer matches the committed README. Outside
    a git checkout, the files as they are."""
    import subprocess

    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        return ROOT
    root = tmp_path_factory.mktemp("committed")
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "README.md", "docs", "metrics", "configs",
                              "params.yaml"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def _result_blocks(root) -> set[str]:
    """The studies whose committed results a document shows (table=published blocks show a
    params file's published numbers and need no run)."""
    return {study for study, options in blocks(root) if options["table"] != "published"}


def test_documented_result_tables_match_the_committed_metrics(committed):
    blocks = _result_blocks(committed)
    assert "default" in blocks  # the README's default results are a generated block
    for study in blocks:
        assert (committed / "metrics" / study / "summary.json").exists(), f"study {study} has no committed metrics"
    assert update(committed, check=True) == [], "run `python -m mtml docs-tables` and commit the documents"


def _project(tmp_path, body: str):
    shutil.copytree(ROOT / "metrics/default", tmp_path / "metrics/s", ignore=shutil.ignore_patterns("runs", "plots"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(f"# t\n\nbefore\n{body}after\n")
    return tmp_path


def test_an_edited_number_is_reported_then_rewritten(tmp_path):
    root = _project(tmp_path, "<!-- results:s table=summary split=test -->\n<!-- /results -->\n")
    assert update(root, check=True) == ["README.md:4 (results:s)"]
    assert update(root) == ["README.md:4 (results:s)"]
    text = (root / "README.md").read_text()
    assert text.startswith("# t\n\nbefore\n<!-- results:s table=summary split=test -->\n**glyphs-5w1s — test (glyphs)**")
    assert text.endswith("<!-- /results -->\nafter\n") and "cross-domain" not in text
    assert update(root, check=True) == []
    rows = json.loads((root / "metrics/s/summary.json").read_text())
    protonet = rows["glyphs-5w1s/protonet/test/glyphs"]
    line = f"| protonet | {protonet['accuracy']:.2f} [{protonet['ci_low']:.2f}, {protonet['ci_high']:.2f}] |"
    assert line in text
    (root / "README.md").write_text(text.replace(line, line.replace(f"{protonet['accuracy']:.2f}", "99.99")))
    assert update(root, check=True) == ["README.md:4 (results:s)"]
    # the same numbers after a rerun of the aggregate: summary.json changes, the table follows
    protonet["accuracy"] = 12.0
    protonet["ci_low"], protonet["ci_high"] = 11.0, 13.0
    (root / "metrics/s/summary.json").write_text(json.dumps(rows))
    update(root)
    assert "| protonet | 12.00 [11.00, 13.00] |" in (root / "README.md").read_text()


def test_versus_reads_every_pair_against_one_method(tmp_path):
    root = _project(tmp_path, "<!-- results:s table=compare split=test versus=protonet -->\n<!-- /results -->\n")
    update(root)
    text = (root / "README.md").read_text()
    pair = json.loads((root / "metrics/s/compare.json").read_text())["glyphs-5w1s/test/glyphs/protonet-vs-maml"]
    flipped = {"better": "worse", "worse": "better"}.get(pair["verdict"], pair["verdict"])
    assert (f"| maml | protonet | {-pair['difference']:+.2f} [{-pair['ci_high']:+.2f}, {-pair['ci_low']:+.2f}] |"
            in text) and text.count("| protonet |") == 3 and f"| {flipped} |" in text


def test_the_check_command_fails_naming_the_block(tmp_path, monkeypatch, capsys):
    root = _project(tmp_path, "<!-- results:s table=compare -->\n| stale |\n<!-- /results -->\n")
    monkeypatch.chdir(root)
    assert main(["docs-tables", "--check"]) == 2
    assert "README.md:4 (results:s)" in capsys.readouterr().err
    assert main(["docs-tables"]) == 0 and main(["docs-tables", "--check"]) == 0


@pytest.mark.parametrize("block, message", [
    ("<!-- results:nostudy -->\n<!-- /results -->\n", "metrics/nostudy/summary.json is missing"),
    ("<!-- results:s colour=red -->\n<!-- /results -->\n", "unknown option 'colour'"),
    ("<!-- results:s table=plot -->\n<!-- /results -->\n", "table=plot is not one of summary, compare"),
    ("<!-- results:s split=train -->\n<!-- /results -->\n", "no rows match split=train"),
    ("<!-- results:s versus=maml -->\n<!-- /results -->\n", "versus= only applies to table=compare"),
    ("<!-- results:s -->\nno closing marker\n", "lacks its closing"),
    ("<!-- results:s table=file -->\n<!-- /results -->\n", "table=file takes one option, path="),
    ("<!-- results:s path=a.md -->\n<!-- /results -->\n", "path= needs table=file"),
    ("<!-- results:s table=file path=a.md split=test -->\n<!-- /results -->\n", "table=file takes one option"),
    ("<!-- results:s table=file path=../../README.md -->\n<!-- /results -->\n", "must be a relative .md file under"),
    ("<!-- results:s table=file path=analysis/none.md -->\n<!-- /results -->\n", "metrics/s/analysis/none.md is missing"),
    ("<!-- results:s table=published -->\n<!-- /results -->\n", "configs/s.yaml is missing; table=published reads"),
    ("<!-- results:s table=published versus=maml -->\n<!-- /results -->\n", "versus= only applies to table=compare"),
])
def test_a_bad_block_stops_with_one_line(tmp_path, block, message):
    root = _project(tmp_path, block)
    with pytest.raises(UserError, match=message) as err:
        update(root, check=True)
    assert "\n" not in str(err.value)
    assert "lacks" in message or "README.md:4 (results:" in str(err.value)


def _documented_studies() -> list[str]:
    return sorted(_result_blocks(ROOT))


@pytest.mark.parametrize("name", _documented_studies())
def test_a_documented_studys_summary_is_what_its_committed_runs_give(tmp_path, name, committed):
    """The other half of the chain documents <- summary.json/compare.json <- runs: aggregating
    the committed runs again with the study's params (params.yaml for `default`, else
    configs/<study>.yaml) gives the committed files (the bootstrap is seeded), and so does every
    analysis a document embeds that reads only run files."""
    from mtml.analysis.aggregate import aggregate
    from mtml.layout import Layout
    from mtml.params import load

    params = params_file(ROOT, name)
    assert params.exists(), f"documented study {name!r} has no params file {params.relative_to(ROOT)}"
    s = load(params)
    assert s.name == name
    layout = Layout(tmp_path, s)
    shutil.copytree(committed / "metrics" / name / "runs", layout.metrics / "runs")
    aggregate(s, layout)
    for file in ("summary.json", "compare.json"):
        ours, theirs = (json.loads(p.read_text()) for p in (layout.summary(file), committed / "metrics" / name / file))
        assert ours == theirs, f"metrics/{name}/{file} is not what its runs give: rerun the aggregate stage"
    from mtml.analysis.registry import get_analysis

    for analysis, file in _embedded_analyses(committed, name):  # the analysis run again on the committed runs
        if analysis not in RECOMPUTABLE:
            continue  # it needs models or data: its block is checked against the committed file only
        out = tmp_path / "analysis" / analysis
        get_analysis(analysis)(s, layout, out)
        ours, theirs = (out / file).read_text(), (committed / "metrics" / name / "analysis" / analysis / file).read_text()
        if file.endswith(".json"):
            ours, theirs = json.loads(ours), json.loads(theirs)
        assert ours == theirs, f"metrics/{name}/analysis/{analysis}/{file} is not what its runs give: rerun the analysis"


# Analyses that read only a study's committed run files (and its summary), so the drift test can
# run them again; the others read what git does not keep (trace.jsonl: attention-trend,
# attention-correlation, metalstm-oscillation, ta-curves) or load models (transference, ...).
RECOMPUTABLE = {"mtl-table", "multimodal-table", "multitask-table", "paper-table"}


def _embedded_analyses(root, study: str) -> set[tuple[str, str]]:
    """(analysis, file) of every block of `study` that shows an analysis' output."""
    out = set()
    for name, options in blocks(root):
        if name != study:
            continue
        if options["table"] == "mtl":
            out.add(("mtl-table", "table.json"))
        elif options["table"] == "file" and options["path"].startswith("analysis/"):
            _, analysis, file = options["path"].split("/", 2)
            out.add((analysis, file))
    return out


def test_multitask_rows_get_one_table_per_task(tmp_path):
    """compare.json of a multi-task study has a `task` column: one table per task, titled with it."""
    row = {"experiment": "scenes-mt", "split": "test", "dataset": "scenes", "versus": "anil", "seeds": 2,
           "episodes": 25, "ci_low": 1.0, "ci_high": 5.0, "p_combined_holm": 0.02, "verdict": "better"}
    rows = {f"{t}/am": {**row, "task": t, "method": "am", "difference": d} for t, d in (("depth", 3.0), ("normals", 2.5))}
    (tmp_path / "metrics/mt").mkdir(parents=True)
    (tmp_path / "metrics/mt/compare.json").write_text(json.dumps(rows))
    (tmp_path / "README.md").write_text("<!-- results:mt table=compare task=normals -->\n<!-- /results -->\n")
    update(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "**scenes-mt — test (scenes) [normals]**, paired on 25 episodes x 2 training seeds" in text
    assert "| am | anil | +2.50 [+1.00, +5.00] | 0.020 | better |" in text and "depth" not in text


def test_tasks_table_puts_each_task_in_a_column_against_one_method(tmp_path):
    """table=tasks: a row per method, a column per task, every cell method − versus (a pair stored
    the other way round read flipped); it needs versus=."""
    row = {"experiment": "scenes-mt", "split": "test", "dataset": "scenes", "seeds": 3, "episodes": 100,
           "p_combined_holm": 0.5, "verdict": "no detectable difference"}
    rows = {"a": {**row, "task": "depth", "method": "am", "versus": "anil", "difference": 3.0, "ci_low": 1.0,
                  "ci_high": 5.0, "verdict": "better"},
            "b": {**row, "task": "normals", "method": "am", "versus": "anil", "difference": -0.5, "ci_low": -2.0,
                  "ci_high": 1.0},
            "c": {**row, "task": "depth", "method": "anil", "versus": "pam", "difference": 2.0, "ci_low": 0.5,
                  "ci_high": 3.5, "verdict": "better"}}
    (tmp_path / "metrics/mt").mkdir(parents=True)
    (tmp_path / "metrics/mt/compare.json").write_text(json.dumps(rows))
    (tmp_path / "README.md").write_text("<!-- results:mt table=tasks versus=anil -->\n<!-- /results -->\n")
    update(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "**scenes-mt — test (scenes)**, each method − anil in points, paired on 100 episodes per task x 3" in text
    assert "| method | depth | normals |" in text
    assert "| am | +3.00 [+1.00, +5.00] better | -0.50 [-2.00, +1.00] – |" in text
    assert "| pam | -2.00 [-3.50, -0.50] worse |  |" in text
    (tmp_path / "README.md").write_text("<!-- results:mt table=tasks -->\n<!-- /results -->\n")
    with pytest.raises(UserError, match="README.md:1 .*table=tasks compares every method with one: add versus="):
        update(tmp_path)


def test_file_block_copies_an_analysis_table_and_follows_it(tmp_path):
    """table=file: an analysis' markdown table verbatim, without its title line; an edit of
    the file makes the block stale."""
    root = _project(tmp_path, "<!-- results:s table=file path=analysis/a/t.md -->\nold\n<!-- /results -->\n")
    table = "| method | x |\n|---|---|\n| maml | 1.00 |"
    (root / "metrics/s/analysis/a").mkdir(parents=True)
    (root / "metrics/s/analysis/a/t.md").write_text(f"# The analysis' title\n\n## glyphs\n\n{table}\n")
    assert update(root) == ["README.md:4 (results:s)"]
    text = (root / "README.md").read_text()
    assert f"-->\n**glyphs**\n\n{table}\n\n<!-- /results -->" in text and "title" not in text
    (root / "metrics/s/analysis/a/t.md").write_text(table.replace("1.00", "2.00"))
    assert update(root, check=True) == ["README.md:4 (results:s)"]


def test_mtl_block_reads_the_mtl_table_analysis(tmp_path):
    """table=mtl: Delta-MTL / Delta-Acc of every method against the single-task baseline, from
    metrics/<study>/analysis/mtl-table/table.json (written here by the analysis on fake runs)."""
    from test_mtl_table import _study, _write_run

    from mtml.analysis.mtl_table import mtl_table
    from mtml.layout import Layout

    study = _study()
    layout = Layout(tmp_path / "runs", study)
    _write_run(layout, "single", (50.0, 2.0), (0.20, 0.01), 40.0)
    _write_run(layout, "hard-uncertainty", (55.0, 2.0), (0.18, 0.01), 44.0)
    _write_run(layout, "mmoe-pcgrad", (60.0, 1.0), (0.22, 0.01), 30.0)
    out = tmp_path / "metrics/mt/analysis/mtl-table"
    out.mkdir(parents=True)
    mtl_table(study, layout, out)
    (summary,) = json.loads((out / "table.json").read_text())
    ci = next(r for r in summary["methods"] if r["method"] == "mmoe-pcgrad")["delta_mtl_ci"]["test"]
    (tmp_path / "README.md").write_text("<!-- results:mt table=mtl split=test -->\n<!-- /results -->\n")
    update(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert ("**mt — test**, Delta-MTL / Delta-Acc in % against `single` (single-task), 95% CI over 1 training "
            "seed x 10 test subtasks per task") in text
    assert "| single | 0 (baseline) | - | 0 (baseline) | - | - |" in text
    assert (f"| mmoe-pcgrad | {ci['estimate']:+.2f} [{ci['ci_low']:+.2f}, {ci['ci_high']:+.2f}] | "
            f"{ci['verdict']} |") in text
    assert "| hard-uncertainty |" in text and "(reference)" in text
    (tmp_path / "README.md").write_text("<!-- results:mt table=mtl versus=single -->\n<!-- /results -->\n")
    with pytest.raises(UserError, match="versus= only applies to table=compare and table=tasks"):
        update(tmp_path)
    (tmp_path / "README.md").write_text("<!-- results:other table=mtl -->\n<!-- /results -->\n")
    with pytest.raises(UserError, match="metrics/other/analysis/mtl-table/table.json is missing"):
        update(tmp_path)


def test_published_block_shows_a_presets_published_numbers(tmp_path):
    """table=published: the params file's `published:` block, a row per method and a column per
    experiment/split, CIs only where given, the source named; filters keep columns; a params
    file without the block is an error naming it."""
    root = _project(tmp_path, "<!-- results:p table=published -->\n<!-- /results -->\n"
                              "<!-- results:p table=published experiment=e5 -->\n<!-- /results -->\n")
    (root / "configs").mkdir()
    source = {"paper": "A & B, 2021", "table": "Table 1"}
    published = {"e1": {"maml": {"test": {"accuracy": 40.5, "source": source}},
                        "proto": {"test": {"accuracy": 43.05, "ci95": 0.58, "dataset": "all", "source": source}}},
                 "e5": {"maml": {"test": {"accuracy": 54.11, "ci95": 0.63, "note": "ran longer.", "source": source}}}}
    (root / "configs/p.yaml").write_text(yaml.safe_dump({"published": published}))
    assert len(update(root)) == 2
    text = (root / "README.md").read_text()
    assert "| method | e1 test | e1 test (all) | e5 test |" in text
    assert "| maml | 40.50 |  | 54.11 ± 0.63 |" in text and "| proto |  | 43.05 ± 0.58 |  |" in text
    assert "source: A & B, 2021, Table 1." in text and "Note on e5/maml: ran longer." in text
    assert "| method | e5 test |\n|---|---|\n| maml | 54.11 ± 0.63 |\n" in text  # experiment=e5 keeps its column
    assert update(root, check=True) == []
    (root / "configs/p.yaml").write_text("seed: 0\n")
    with pytest.raises(UserError, match=r"configs/p.yaml has no `published:` block"):
        update(root, check=True)
