"""The benchmark stage measures every method of a params file and writes its JSON."""

import json

from mtml.benchmark import benchmark, write_benchmark

from pipeline_helpers import tiny_params


def test_benchmark_rows_for_every_method(tmp_path):
    from mtml.layout import Layout

    study = tiny_params(methods={"pixel-nn": {}, "protonet": {"filters": 8}, "maml": {"filters": 8}})
    result = benchmark(study, Layout(tmp_path, study), "tiny", iterations=1, episodes=2)
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"pixel-nn", "protonet", "maml"}
    assert "train_iter_per_s" not in rows["pixel-nn"] and rows["pixel-nn"]["parameters"] == 0
    for name in ("protonet", "maml"):
        assert rows[name]["train_iter_per_s"] > 0 and rows[name]["eval_episodes_per_s"] > 0
        assert rows[name]["parameters"] > 0
    write_benchmark(result, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["device"] == "cpu"
