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


def test_compare_times_the_speed_options_of_methods_with_a_batched_path():
    from mtml.benchmark import compare

    params = tiny_params(methods={"pixel-nn": {}, "protonet": {"filters": 4}})
    result = compare(params, "tiny", repeats=1, iterations=1, episodes=2, eval_batches=(1, 2),
                     numerics=("reference", "channels_last"))
    # pixel-nn has no batched path; ProtoNet comes twice: as configured and with running
    # BatchNorm statistics (evaluation only: each test image embedded once)
    row, running = result["rows"]
    assert row["method"] == "protonet" and running["method"] == "protonet[running]"
    assert row["train_it_per_s_loop"] > 0 and row["train_it_per_s_vmap"] > 0
    assert row["train_it_per_s_vmap+channels_last"] > 0 and row["train_it_per_s_loop+channels_last"] > 0
    assert row["eval_batch1_over_loop"] == 1.0 and row["eval_batch2_over_loop"] > 0
    assert row["eval_episodes_per_s_batch2+channels_last"] > 0
    assert "train_it_per_s_loop" not in running
    assert running["eval_batch1_over_loop"] == 1.0 and running["eval_batchauto_over_loop"] > 0


def test_against_learn2learn_says_when_it_is_absent(monkeypatch):
    import sys

    import pytest

    from mtml.bench_learn2learn import against_learn2learn
    from mtml.errors import UserError

    monkeypatch.setitem(sys.modules, "learn2learn", None)  # import fails as if not installed
    with pytest.raises(UserError, match="learn2learn is not importable.*bench"):
        against_learn2learn(tiny_params(), "tiny")


def test_against_learn2learn_times_both_networks_where_it_is_installed():
    """With the `bench` extra: rows for MAML and ANIL with the machinery ratio (learn2learn on
    our network) and the as-shipped ratio (learn2learn on its own CNN4 of the same shape)."""
    import pytest

    pytest.importorskip("learn2learn", reason="learn2learn is the optional `bench` extra (not in CI)")
    from mtml.bench_learn2learn import against_learn2learn, import_learn2learn, l2l_network
    from mtml.models.conv4 import Classifier

    ours = Classifier((1, 28, 28), 5, 8)
    theirs = l2l_network(import_learn2learn(), ours, (1, 28, 28), 5)
    assert sorted(p.shape for p in theirs.parameters()) == sorted(p.shape for p in ours.parameters())
    params = tiny_params(methods={"maml": {"filters": 8}, "anil": {"filters": 8}})
    result = against_learn2learn(params, "tiny", repeats=1, iterations=1, episodes=2)
    assert [r["method"] for r in result["rows"]] == ["maml", "anil"]
    for row in result["rows"]:
        for key in ("train_ours_over_l2l", "train_ours_over_l2l_cnn4", "eval_ours_over_l2l",
                    "eval_ours_over_l2l_cnn4"):
            assert row[key] > 0
