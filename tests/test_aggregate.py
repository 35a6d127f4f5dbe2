"""Aggregation of a study's runs over seeds, on the committed default runs (metrics/default/runs).

- summary.json: one row per seed and one aggregated row per run and split, schema-valid, keyed
  so that `dvc metrics diff` compares the aggregated numbers; the aggregate of one seed is that
  seed's eval.json.
- `published:` puts the published numbers and a status next to ours in summary.md.
- A seed whose run is missing stops aggregation with one line naming the run's file.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from mtml.analysis.aggregate import SummaryRows, aggregate
from mtml.analysis.compare import CompareRows
from mtml.errors import UserError
from mtml.layout import Layout
from mtml.params import read, study

from pipeline_helpers import ROOT

RUNS = ROOT / "metrics/default/runs"
SOURCE = {"paper": "Finn, Abbeel & Levine, ICML 2017", "table": "Table 1"}


def _project(tmp_path, **changes):
    params = {**read(ROOT / "params.yaml"), **changes}
    s = study(params, ["params.yaml"])
    shutil.copytree(RUNS, Layout(tmp_path, s).metrics / "runs")
    return s, Layout(tmp_path, s)


@pytest.mark.skipif(not RUNS.exists(), reason="no committed default runs")
def test_committed_runs_aggregate_per_seed_with_published_numbers(tmp_path):
    published = {"glyphs-5w1s": {"maml": {"test": {"accuracy": 98.7, "ci95": 0.4, "source": SOURCE}}}}
    s, layout = _project(tmp_path, seeds=[0], published=published, reference="protonet")
    aggregate(s, layout)
    rows = json.loads(layout.summary("summary.json").read_text())
    # (values a row lacks are left out of the file: one seed has no seed_std)
    SummaryRows.validate(pd.DataFrame(list(rows.values())).reindex(columns=list(SummaryRows.to_schema().columns)))
    assert "seed_std" not in rows["glyphs-5w1s/maml/test/glyphs"]
    agg, one = rows["glyphs-5w1s/maml/test/glyphs"], rows["glyphs-5w1s/maml/test/glyphs/seed-0"]
    assert (agg["seed"], agg["seeds"], one["seed"]) == ("all", 1, "0")
    evaluated = next(r for r in json.loads((RUNS / "glyphs-5w1s/maml/seed-0/eval.json").read_text())
                     if r["split"] == "test")
    for row in (agg, one):  # episodes.csv holds 4 decimals: eval.json's mean within rounding
        assert row["accuracy"] == pytest.approx(evaluated["accuracy"], abs=1e-3)
    assert one["ci_low"] == pytest.approx(one["accuracy"] - one["ci95"])
    assert len(rows) == 4 * 2 * 2  # methods x splits x (one seed + aggregate)
    md = layout.summary("summary.md").read_text()
    # the paper's 98.7 lies above our CI: "above" (we measure less)
    assert "| 98.70 ± 0.40 | " in md and "| above | Finn, Abbeel & Levine, ICML 2017, Table 1 |" in md
    compared = pd.DataFrame(list(json.loads(layout.summary("compare.json").read_text()).values()))
    CompareRows.validate(compared)
    assert set(compared["versus"]) == {"protonet"} and len(compared) == 3 * 2
    assert (layout.metrics / "plots/compare.png").stat().st_size > 0


@pytest.mark.skipif(not RUNS.exists(), reason="no committed default runs")
def test_a_missing_seed_is_named_in_one_line(tmp_path):
    s, layout = _project(tmp_path, seeds=[0, 7])
    with pytest.raises(UserError, match=r"runs/glyphs-5w1s/pixel-nn/seed-7/timing_train.json is missing"):
        aggregate(s, layout)


@pytest.mark.skipif(not RUNS.exists(), reason="no committed default runs")
@pytest.mark.parametrize("keep", [lambda rows: rows[1:], lambda rows: []], ids=["a row removed", "empty list"])
def test_an_eval_json_missing_rows_stops_aggregation_in_one_line(tmp_path, keep):
    """Issue 13, fault 3: a run's results never vanish from the table silently."""
    s, layout = _project(tmp_path)
    path = layout.run_dir("glyphs-5w1s", "maml", 0) / "eval.json"
    path.write_text(json.dumps(keep(json.loads(path.read_text()))))
    with pytest.raises(UserError, match=r"glyphs-5w1s/maml/seed-0/eval.json lacks the (test|cross-domain) row "
                                        r"of dataset '[\w-]+' for glyphs-5w1s/maml.*evaluate") as err:
        aggregate(s, layout)
    assert "\n" not in str(err.value)
    assert not layout.summary("summary.json").exists()
