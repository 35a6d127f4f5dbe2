"""CUDA paths of every experiment kind and method family.

Skipped where torch sees no CUDA GPU (CI, most laptops); on a GPU machine run
`python -m pytest -q tests/test_cuda.py`. They check what the CPU tests cannot: the same
meta-gradients come out on both devices, prepared images live on the GPU, each kind trains
and evaluates end to end with `device: cuda`, a GPU-trained model evaluates on the CPU,
and an interrupted GPU training resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mtml.layout import Layout
from mtml.methods import build
from mtml.methods.base import MetaLearner
from mtml.params import study as make_study

from pipeline_helpers import TINY, random_episode, run_pipeline, tiny_params

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU visible to torch (these tests run on a GPU machine)")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.fixture(autouse=True)
def full_fp32():
    # TF32 convolutions and matmuls differ from CPU float32 by ~1e-3 relative; compare in fp32.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


SMALL = {"filters": 8}
COND = {"filters": 8, "encoder_filters": 8, "embed_dim": 16, "generator_hidden": 8}
GRADIENT_METHODS = {
    "maml": SMALL, "anil": SMALL, "metasgd": SMALL, "metalstm++": SMALL, "taml": SMALL,
    "ta-maml": {**SMALL, "meta_batch": 3}, "protonet": SMALL,
    "mmaml": COND, "mmaml-kml": COND, "mprotonet-kml": COND,
}


@pytest.mark.parametrize("name", list(GRADIENT_METHODS))
def test_meta_loss_and_gradients_match_between_cpu_and_cuda(name):
    shape = (3, 28, 28) if name.startswith(("mmaml", "mproto")) else (1, 28, 28)
    torch.manual_seed(0)
    on_cpu = build(name, GRADIENT_METHODS[name], shape, 5)
    on_gpu = copy.deepcopy(on_cpu).to(CUDA)
    batch = [random_episode(5, 1, 5, shape, CPU) for _ in range(3)]
    loss_cpu, _ = on_cpu.meta_loss(batch)
    loss_gpu, _ = on_gpu.meta_loss([e.to(CUDA) for e in batch])
    loss_cpu.backward()
    loss_gpu.backward()
    assert float(loss_gpu) == pytest.approx(float(loss_cpu), rel=1e-4, abs=1e-5)
    compared = 0
    for (key, p_cpu), (_, p_gpu) in zip(on_cpu.named_parameters(), on_gpu.named_parameters()):
        assert p_gpu.device.type == "cuda"
        if p_cpu.grad is None:
            assert p_gpu.grad is None, key
            continue
        torch.testing.assert_close(p_gpu.grad.cpu(), p_cpu.grad, rtol=2e-3, atol=2e-5, msg=key)
        compared += 1
    assert compared > 0


def test_prepared_images_are_held_on_the_gpu(tmp_path):
    from mtml.data.sources import prepare_dataset
    from mtml.data.storage import load_prepared
    from mtml.episodes.sampler import EpisodeStream, ImageBank

    params = tiny_params()
    prepare_dataset("glyphs", params.dataset("glyphs"), tmp_path / "raw", tmp_path / "processed", 0)
    bank = ImageBank(load_prepared(tmp_path / "processed"), CUDA)
    ep = EpisodeStream(bank, "train", 5, 1, 5, seed=0).sample()
    assert {t.device.type for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y)} == {"cuda"}


def _run(params, root, device, methods=None, evaluate_on=None):
    """{method: eval rows} of the single experiment in `params`."""
    return {meth: rows for (_, meth), rows in
            run_pipeline(params, root, methods, device, evaluate_on).items()}


FEWSHOT_METHODS = {"pixel-nn": {}, "protonet": SMALL, "maml": SMALL, "anil": SMALL, "metasgd": SMALL,
                   "metalstm++": SMALL, "taml": SMALL, "ta-maml": {**SMALL, "meta_batch": 2}}


def test_fewshot_methods_train_on_cuda_and_beat_chance(tmp_path):
    params = tiny_params(device="cuda", methods=FEWSHOT_METHODS)
    rows = _run(params, tmp_path, CUDA)
    for meth, result in rows.items():
        test = [r for r in result if r["split"] == "test"]
        assert test and test[0]["accuracy"] > 30.0, (meth, test)
    saved = torch.load(Layout(tmp_path, params).model("tiny", "maml"), map_location="cpu", weights_only=False)
    assert saved["state"], "no weights saved"


def test_a_gpu_trained_model_evaluates_on_the_cpu(tmp_path):
    params = tiny_params(device="cuda", methods={"maml": SMALL})
    rows = _run(params, tmp_path, CUDA, evaluate_on=CPU)
    assert [r for r in rows["maml"] if r["split"] == "test"][0]["accuracy"] > 30.0


def test_an_interrupted_gpu_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from mtml.stages import train

    params = tiny_params(device="cuda", methods={"maml": SMALL})
    _run(params, tmp_path, CUDA)  # prepares data and episodes, one whole run as reference
    layout = Layout(tmp_path, params)
    whole = json.loads((layout.run_dir("tiny", "maml") / "train.json").read_text())
    params = tiny_params(device="cuda", methods={"maml": SMALL, "again": {"algorithm": "maml", **SMALL}})
    layout = Layout(tmp_path, params)
    model_dir, metrics_dir = layout.model_dir("tiny", "again"), layout.run_dir("tiny", "again")
    real_step, calls = MetaLearner.train_step, {"n": 0}

    def step_then_die(self, *args):
        calls["n"] += 1
        if calls["n"] == TINY["training"]["val_interval"] + 3:  # after the first checkpoint
            raise KeyboardInterrupt
        return real_step(self, *args)

    monkeypatch.setattr(MetaLearner, "train_step", step_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(params.run("tiny", "again"), layout, CUDA)
    ckpt = torch.load(model_dir / "checkpoint.pt", map_location=CUDA, weights_only=False)
    assert ckpt["iteration"] == TINY["training"]["val_interval"]
    assert "cuda_rng" in ckpt
    monkeypatch.setattr(MetaLearner, "train_step", real_step)
    summary = train(params.run("tiny", "again"), layout, CUDA)
    assert summary["iterations"] == whole["iterations"]
    import pandas as pd

    log = pd.read_csv(metrics_dir / "train_log.csv")
    assert log["iteration"].tolist() == list(range(1, whole["iterations"] + 1))


def test_multimodal_kind_trains_on_cuda_and_beats_chance_in_every_mode(tmp_path):
    from test_multimodal import tiny_multimodal

    params = make_study({**tiny_multimodal().params, "device": "cuda"})
    rows = _run(params, tmp_path, CUDA)
    for meth, result in rows.items():
        for r in result:
            if r["split"] == "test":
                assert r["accuracy"] > 25.0, (meth, r)


def test_multitask_kind_trains_on_cuda_with_every_task(tmp_path):
    from test_multitask import PIPELINE_PARAMS

    params = make_study({**copy.deepcopy(PIPELINE_PARAMS), "device": "cuda"})
    methods = ["am", "pam"]
    _run(params, tmp_path, CUDA, methods=methods)
    for meth in methods:
        result = json.loads((Layout(tmp_path, params).run_dir("mt", meth) / "details.json").read_text())
        overall = {r["task"]: r for r in result["rows"] if r["environment"] == "all" and r["split"] == "test"}
        assert set(overall) == {"classification", "depth", "normals", "vanishing_point"}, meth
        assert overall["classification"]["accuracy"] > 100 / 3, (meth, overall["classification"])
        for task in ("depth", "normals", "vanishing_point"):
            assert 0 < overall[task]["mse"] < float("inf"), (meth, task, overall[task])
