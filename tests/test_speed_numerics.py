"""`training.tf32` and `training.amp` (mtml.speed): the reference mode is float32 with TF32 off
(also on CUDA, where PyTorch enables it for convolutions by default), bfloat16 autocast keeps
meta-gradients finite and near float32's, and the flags are restored afterwards.

MTML_TEST_DEVICE=cuda runs them on the GPU (scripts/gpu_check.sh does)."""

import os

import pytest
import torch

from mtml.benchmark import random_episode
from mtml.methods import build
from mtml.speed import describe, numerics, prepare

SHAPE, WAYS = (1, 16, 16), 3
DEVICE = torch.device(os.environ.get("MTML_TEST_DEVICE", "cpu"))
CASES = {
    "maml": {"filters": 8, "inner_steps": 2},
    "anil": {"filters": 8, "inner_steps": 2},
    "protonet": {"filters": 8},
}


def _meta_gradient(name, training, task_parallel="loop"):
    torch.manual_seed(1)
    learner = prepare(build(name, dict(CASES[name]), SHAPE, WAYS).to(DEVICE), training)
    learner.task_parallel = task_parallel
    torch.manual_seed(0)
    batch = [random_episode(WAYS, 2, 3, SHAPE, DEVICE) for _ in range(4)]
    with numerics(training, DEVICE):
        loss, _ = learner.meta_loss(batch)
        loss.backward()
    grad = torch.cat([p.grad.flatten() for p in learner.parameters() if p.grad is not None])
    return loss.detach(), grad


def test_reference_turns_tf32_off_and_restores_the_flags():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's own default
    try:
        with numerics({}, "cpu"):
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            assert not torch.is_autocast_enabled("cpu")
        with numerics({"tf32": True}, "cpu"):
            assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_amp_false_is_the_reference_bit_for_bit():
    ref_loss, ref = _meta_gradient("maml", {})
    loss, grad = _meta_gradient("maml", {"amp": False, "tf32": False})
    assert torch.equal(ref, grad) and torch.equal(ref_loss, loss)


@pytest.mark.parametrize("name", ["anil", "protonet"])
@pytest.mark.parametrize("task_parallel", ["loop", "vmap"])
def test_bf16_autocast_meta_gradient_is_finite_and_close(name, task_parallel):
    ref_loss, ref = _meta_gradient(name, {}, task_parallel)
    loss, grad = _meta_gradient(name, {"amp": "bf16"}, task_parallel)
    assert torch.isfinite(grad).all() and torch.isfinite(loss)
    assert not torch.equal(grad, ref)  # autocast did change the arithmetic
    cosine = torch.nn.functional.cosine_similarity(grad, ref, dim=0)
    assert cosine > 0.98, f"bf16 meta-gradient direction off: cosine {cosine:.4f}"
    assert abs(float(loss) - float(ref_loss)) < 0.05 * abs(float(ref_loss))


@pytest.mark.parametrize("task_parallel", ["loop", "vmap"])
def test_bf16_maml_second_order_meta_gradient_is_finite_but_not_float32s(task_parallel):
    """Why docs/speed.md advises against `amp: bf16` for second-order MAML: differentiating
    through the bf16 inner loop leaves the meta-gradient finite but pointing elsewhere
    (cosine to float32's ~0.5 here; ANIL and ProtoNet stay above 0.98)."""
    _, ref = _meta_gradient("maml", {}, task_parallel)
    _, grad = _meta_gradient("maml", {"amp": "bf16"}, task_parallel)
    assert torch.isfinite(grad).all()
    if DEVICE.type == "cpu":  # measured here; the GPU's cosine is printed by gpu_check.sh
        assert torch.nn.functional.cosine_similarity(grad, ref, dim=0) < 0.95


def test_bf16_autocast_predictions_agree():
    torch.manual_seed(1)
    learner = build("protonet", dict(CASES["protonet"]), SHAPE, WAYS).to(DEVICE).eval()
    torch.manual_seed(0)
    eps = [random_episode(WAYS, 2, 5, SHAPE, DEVICE) for _ in range(8)]
    with torch.no_grad():
        ref = torch.cat([learner.predict(ep).argmax(-1) for ep in eps])
        with numerics({"amp": "bf16"}, DEVICE):
            low = torch.cat([learner.predict(ep).argmax(-1) for ep in eps])
    assert (ref == low).float().mean() >= 0.9


@pytest.mark.parametrize("name", ["maml", "anil", "protonet"])
@pytest.mark.parametrize("task_parallel", ["loop", "vmap"])
def test_channels_last_meta_gradient_equals_contiguous(name, task_parallel):
    ref_loss, ref = _meta_gradient(name, {}, task_parallel)
    loss, grad = _meta_gradient(name, {"channels_last": True}, task_parallel)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref, rtol=1e-4, atol=1e-5)


def test_channels_last_reaches_the_convolutions():
    from mtml.models.conv4 import Conv4

    learner = prepare(build("maml", dict(CASES["maml"]), SHAPE, WAYS), {"channels_last": True})
    nets = [m for m in learner.modules() if isinstance(m, Conv4)]
    assert nets and all(m.memory_format is torch.channels_last for m in nets)
    weight = nets[0].blocks[1].conv.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    seen = []
    handle = nets[0].blocks[0].conv.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    learner.predict(random_episode(WAYS, 2, 3, SHAPE))
    handle.remove()
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)


def test_describe_names_the_mode():
    assert describe({}) == "reference (float32)"
    assert describe({"tf32": True, "amp": "bf16"}) == "TF32, autocast bf16"
    assert describe({"channels_last": True}) == "channels_last"


@pytest.mark.parametrize("name", ["maml", "anil", "protonet"])
def test_bf16_batched_evaluation_runs_and_agrees_with_the_float32_loop(name):
    """vmap'd adaptation under autocast (the split BatchNorm form, mtml.models.conv4) gives
    per-episode accuracies near the float32 reference loop's."""
    import contextlib
    import io

    from mtml.benchmark import random_bank
    from mtml.evaluation.evaluate import evaluate_manifest

    torch.manual_seed(1)
    learner = build(name, dict(CASES[name]), SHAPE, WAYS).to(DEVICE).eval()
    bank, manifest = random_bank(WAYS, 2, 3, SHAPE, DEVICE, episodes=8)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ref = evaluate_manifest(learner, bank, manifest, "ref", 1)
        with numerics({"amp": "bf16"}, DEVICE):
            low = evaluate_manifest(learner, bank, manifest, "bf16", 4)
    assert list(low["episode"]) == list(ref["episode"])
    assert abs(low["accuracy"].mean() - ref["accuracy"].mean()) <= 10.0
    assert (low["accuracy"] - ref["accuracy"]).abs().median() <= 34.0  # at most one of 3 queries per class flips
