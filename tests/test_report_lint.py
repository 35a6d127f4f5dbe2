"""The Snakemake workflow is lint-clean and formatted, and its report holds every result.

- `snakemake --lint` and `snakefmt --check` pass on the repository's workflow.
- `snakemake --report report.html` after a tiny run (with one analysis) is one self-contained
  file: the results table, every figure of the pipeline (embedded), each with its caption.
"""

from __future__ import annotations

import base64

import pytest
import yaml

from pipeline_helpers import ROOT, project_dir, run_command


def _run(cmd, cwd):
    r = run_command(cmd, cwd, timeout=600)
    return r.stdout + r.stderr


def test_snakemake_lint_is_clean(tmp_path):
    # The repository's own params: the workflow users run.
    root = project_dir(tmp_path, yaml.safe_load((ROOT / "params.yaml").read_text()))
    out = _run(["snakemake", "--lint"], root)
    assert "Congratulations, your workflow is in a good condition!" in out, out


def test_snakefmt_check_is_clean():
    out = _run(["snakefmt", "--check", "Snakefile", "workflow"], ROOT)
    assert "would be changed" not in out, out


@pytest.mark.slow
def test_report_has_every_figure_and_table_with_captions(tmp_path):
    params = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    params["methods"] = {"pixel-nn": {}, "protonet": {"filters": 8}}
    params["analyses"] = ["paper-table"]
    root = project_dir(tmp_path, params)
    _run(["snakemake", "--cores", "2", "all", "--quiet"], root)
    _run(["snakemake", "--report", "report.html"], root)
    html = (root / "report.html").read_text()

    figures = sorted((root / "metrics").rglob("*.png"))
    names = {f.relative_to(root).as_posix() for f in figures}
    assert names == {"metrics/default/plots/accuracy.png", "metrics/default/plots/val_curves.png",
                     "metrics/default/plots/compare.png",
                     "metrics/default/analysis/paper-table/paper_table.png"}, names
    tables = [root / "metrics/default/summary.md", root / "metrics/default/compare.md",
              root / "metrics/default/analysis/paper-table/paper_table.md"]
    for item in figures + tables:  # embedded, not linked
        assert base64.b64encode(item.read_bytes()).decode() in html, item
    for caption in ("workflow.rst", "accuracy.rst", "val_curves.rst", "summary.rst", "compare.rst", "forest.rst"):
        first_words = " ".join((ROOT / "workflow/report" / caption).read_text().split()[:3])
        assert first_words in html, caption
    assert html.count("analysis, drawn from the finished runs") == 1  # the figure's caption
    assert "Table <tt class=\\\"docutils literal\\\">paper_table</tt>" in html  # the table's
    # The results table itself is in the report, not only as a download.
    for meth in params["methods"]:
        assert f"| {meth} | " in html, meth
    assert "| pixel-nn | protonet | " in html  # compare.md too
    assert "<script src=" not in html and "<link href=" not in html  # self-contained
