"""Tasks and episodes in parallel (torch.func.vmap) against the per-task reference loop.

MTML_TEST_DEVICE=cuda runs them on the GPU (scripts/gpu_check.sh does)."""

import os

import numpy as np
import pandas as pd
import pytest
import torch

from mtml.benchmark import random_bank, random_episode
from mtml.episodes.manifest import manifest_arrays
from mtml.errors import UserError
from mtml.evaluation.evaluate import evaluate_manifest
from mtml.methods import build
from mtml.methods.parallel import EpisodeBatch, batch_outputs, family, resolve_task_parallel
from mtml.models.conv4 import ConvBlock, split_affine_batch_norm

from pipeline_helpers import tiny_params

SHAPE, WAYS = (1, 16, 16), 3
DEVICE = torch.device(os.environ.get("MTML_TEST_DEVICE", "cpu"))
CASES = {
    "maml": {"filters": 4, "inner_steps": 2},
    "fomaml": {"algorithm": "maml", "filters": 4, "inner_steps": 2, "first_order": True},
    "anil": {"filters": 4, "inner_steps": 2, "eval_inner_steps": 3},
    "metasgd": {"filters": 4},
    "taml": {"filters": 4},
    "protonet": {"filters": 4},
}


def _learner(name):
    cfg = dict(CASES[name])
    torch.manual_seed(1)
    return build(name, cfg, SHAPE, WAYS).to(DEVICE)


def _episodes(n=3, seed=0):
    torch.manual_seed(seed)
    return [random_episode(WAYS, 2, 3, SHAPE, DEVICE) for _ in range(n)]


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd", "protonet"])
def test_vmap_meta_gradient_equals_loop(name):
    learner, batch = _learner(name), _episodes()
    grads, losses = {}, {}
    for mode in ("loop", "vmap"):
        learner.task_parallel = mode
        learner.zero_grad()
        loss, _ = learner.meta_loss(batch)
        loss.backward()
        losses[mode] = loss.detach()
        grads[mode] = {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}
    assert family(learner) is not None
    assert set(grads["loop"]) == set(grads["vmap"]) and grads["loop"]
    torch.testing.assert_close(losses["vmap"], losses["loop"], rtol=1e-5, atol=1e-6)
    for k in grads["loop"]:
        torch.testing.assert_close(grads["vmap"][k], grads["loop"][k], rtol=1e-5, atol=1e-5, msg=k)


def test_batched_prediction_and_nil_features_equal_the_loop():
    episodes = _episodes(2, seed=2)
    batch = EpisodeBatch.stack(episodes)
    for name in ("maml", "anil", "taml", "protonet"):
        learner = _learner(name).eval()
        with torch.no_grad():
            out = batch_outputs(learner, batch, learner.hp.get("eval_inner_steps", 0), features=True)
            for i, ep in enumerate(episodes):
                torch.testing.assert_close(out.logits[i], learner.predict(ep), rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out.support_features[i], learner.embed(ep.support_x), rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(out.query_features[i], learner.embed(ep.query_x), rtol=1e-5, atol=1e-5)


def test_methods_that_change_the_task_code_keep_the_loop():
    for name, cfg in (("metalstm", {"filters": 4}), ("mprotonet", {"filters": 4}), ("pixel-nn", {})):
        learner = build(name, cfg, SHAPE, WAYS).to(DEVICE)
        assert family(learner) is None
        learner.task_parallel = "vmap"  # ignored: the loop runs
        if learner.trainable:
            loss, _ = learner.meta_loss(_episodes(2))
            assert torch.isfinite(loss)


def test_batched_evaluation_equals_the_reference_loop():
    bank, manifest = random_bank(WAYS, 1, 4, SHAPE, DEVICE, episodes=5)
    for name in ("maml", "anil", "protonet", "pixel-nn"):
        learner = build(name, CASES.get(name, {}), SHAPE, WAYS).to(DEVICE).eval()
        loop = evaluate_manifest(learner, bank, manifest, "t", episode_batch=1)
        for size in (2, "auto"):  # 2 leaves a partial last batch
            pd.testing.assert_frame_equal(evaluate_manifest(learner, bank, manifest, "t", episode_batch=size), loop)
        assert list(loop["episode"]) == list(range(5))


def test_reference_loop_reuses_nil_features_bit_for_bit():
    """The loop (episode_batch 1) takes NIL's features from the prediction where it computed
    them: exactly the tensors `predict` and a second `embed` pass give, so its metrics are
    byte-identical to the loop that embedded twice."""
    from mtml.episodes.sampler import manifest_episodes
    from mtml.evaluation.batched import predict_with_features

    bank, manifest = random_bank(WAYS, 1, 4, SHAPE, DEVICE, episodes=3, seed=5)
    for name in ("anil", "protonet", "metalstm"):
        learner = build(name, CASES.get(name, {"filters": 4}), SHAPE, WAYS).to(DEVICE).eval()
        with torch.no_grad():
            for _, ep in manifest_episodes(bank, manifest):
                logits, support, query = predict_with_features(learner, ep)
                assert torch.equal(logits, learner.predict(ep)), name
                assert torch.equal(support, learner.embed(ep.support_x)), name
                assert torch.equal(query, learner.embed(ep.query_x)), name


def _groupby_episodes(manifest):
    """The per-episode pandas path the manifest arrays replace."""
    for ep, rows in manifest.groupby("episode", sort=True):
        parts = []
        for role in ("support", "query"):
            r = rows[rows["role"] == role].sort_values("label", kind="stable")
            parts.append(r["item"].to_numpy().reshape(r["label"].nunique(), -1))
        yield int(ep), parts


def test_manifest_arrays_hold_each_episodes_items_in_order():
    _, manifest = random_bank(4, 2, 3, SHAPE, DEVICE, episodes=6, seed=3)
    shuffled = manifest.sample(frac=1.0, random_state=0).reset_index(drop=True)
    arrays = manifest_arrays(shuffled)
    assert arrays.support.shape == (6, 4, 2) and arrays.query.shape == (6, 4, 3)
    for i, (ep, (sup, qry)) in enumerate(_groupby_episodes(shuffled)):
        assert arrays.episodes[i] == ep
        np.testing.assert_array_equal(arrays.support[i], sup)
        np.testing.assert_array_equal(arrays.query[i], qry)
    one_query_less = manifest.drop(manifest.index[(manifest["episode"] == 2) & (manifest["role"] == "query")][0])
    with pytest.raises(ValueError, match="differ"):
        manifest_arrays(one_query_less)


def test_split_affine_batch_norm_is_the_same_function():
    torch.manual_seed(0)
    block, x = ConvBlock(2, 3), torch.randn(5, 2, 8, 8)
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.uniform_(-0.5, 0.5)
    with split_affine_batch_norm():
        split = block(x)
    torch.testing.assert_close(split, block(x), rtol=1e-5, atol=1e-6)


def test_task_parallel_setting():
    assert resolve_task_parallel("auto", torch.device("cpu")) == "loop"
    assert resolve_task_parallel("vmap", torch.device("cpu")) == "vmap"
    assert "task_parallel" not in tiny_params().params["training"]  # absent = auto, fingerprints unchanged
    with pytest.raises(UserError, match="training.task_parallel"):
        tiny_params(training={"task_parallel": "threads"})
    with pytest.raises(UserError, match="evaluation.episode_batch"):
        tiny_params(evaluation={"episode_batch": 0})


@pytest.mark.parametrize("nil", ["means", "samples"])
def test_running_statistics_protonet_embeds_each_image_once_and_equals_the_loop(nil, monkeypatch):
    """`batch_norm: running` in eval mode: an image's embedding does not depend on its episode,
    so evaluation embeds each test image once (mtml.evaluation.batched.evaluate_embedded_once);
    per-episode accuracies equal the per-episode reference loop's."""
    from mtml.evaluation import batched

    torch.manual_seed(1)
    learner = build("protonet", {"filters": 4, "batch_norm": "running"}, SHAPE, WAYS).to(DEVICE)
    learner.train()
    with torch.no_grad():  # move the running averages off their initial values
        for _ in range(3):
            learner.embed(torch.rand(30, *SHAPE, device=DEVICE))
    learner.eval()
    bank, manifest = random_bank(WAYS, 2, 3, SHAPE, DEVICE, episodes=12)
    calls = []
    embed = learner.embed
    monkeypatch.setattr(learner, "embed", lambda x: calls.append(len(x)) or embed(x))
    cached = evaluate_manifest(learner, bank, manifest, "cached", "auto", nil=nil)
    assert batched.embeds_once(learner)
    n_items = len(np.unique(manifest["item"]))
    assert sum(calls) == n_items  # each image once, although episodes share images
    ref = evaluate_manifest(learner, bank, manifest, "loop", 1, nil=nil)
    assert list(cached["episode"]) == list(ref["episode"])
    np.testing.assert_allclose(cached["accuracy"], ref["accuracy"])
    np.testing.assert_allclose(cached["nil_accuracy"], ref["nil_accuracy"])


def test_transductive_or_training_mode_never_embeds_once():
    from mtml.evaluation import batched

    assert not batched.embeds_once(build("protonet", {"filters": 4}, SHAPE, WAYS).eval())
    assert not batched.embeds_once(build("protonet", {"filters": 4, "batch_norm": "running"}, SHAPE, WAYS).train())
    assert not batched.embeds_once(build("maml", {"filters": 4}, SHAPE, WAYS).eval())
