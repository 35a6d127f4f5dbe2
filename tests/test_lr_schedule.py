"""`training.lr_decay`: a step schedule of the meta-optimiser's learning rate (Snell et al.
halve Adam's rate every 2000 episodes), stepped per meta-iteration and resumed exactly."""

import numpy as np
import pandas as pd
import pytest
import torch

from mtml.data.storage import PreparedDataset
from mtml.episodes.sampler import EpisodeStream, ImageBank
from mtml.errors import UserError
from mtml.methods import build
from mtml.params import study
from mtml.training.trainer import fit

from pipeline_helpers import tiny_params


def _bank() -> ImageBank:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6)
    table = pd.DataFrame({"class_id": range(10), "name": [f"c{i}" for i in range(10)],
                          "group": [f"c{i}" for i in range(10)], "split": "train", "n_images": 6})
    images = rng.integers(0, 256, (len(labels), 1, 16, 16), dtype=np.uint8)
    return ImageBank(PreparedDataset("toy", images, labels, table, {}), torch.device("cpu"))


def _train(tmp_path, tcfg, die_at=None):
    """fit() a tiny ProtoNet; the learning rate each iteration ran with, and the learner.
    `die_at`: raise KeyboardInterrupt at that iteration (after a checkpoint), as a kill would."""
    torch.manual_seed(0)
    learner = build("protonet", {"filters": 4}, (1, 16, 16), 3)
    lrs = []
    real_step = learner.train_step

    def step(batch, optimizer, more):
        if len(lrs) + 1 == die_at:
            raise KeyboardInterrupt
        lrs.append(optimizer.param_groups[0]["lr"])
        return real_step(batch, optimizer, more)

    learner.train_step = step
    stream = EpisodeStream(_bank(), "train", 3, 1, 2, seed=1)
    fit(learner, stream, lambda _: 50.0, tcfg, "f", tmp_path, tmp_path, torch.device("cpu"), "t",
        {"image_shape": [1, 16, 16], "ways": 3})
    return lrs, learner


TCFG = {"iterations": 9, "meta_batch": 1, "meta_lr": 0.01, "val_interval": 2, "val_episodes": 1}


def test_the_rate_is_multiplied_exactly_at_each_step_boundary(tmp_path):
    lrs, _ = _train(tmp_path, {**TCFG, "lr_decay": {"every": 4, "factor": 0.5}})
    # iterations 1-4 at meta_lr, 5-8 at half, 9 at a quarter
    assert lrs == pytest.approx([0.01] * 4 + [0.005] * 4 + [0.0025], rel=1e-12)
    constant, _ = _train(tmp_path / "c", TCFG)  # absent: constant, as before the key existed
    assert constant == [0.01] * 9


def test_resumed_training_keeps_the_schedule(tmp_path):
    tcfg = {**TCFG, "lr_decay": {"every": 3, "factor": 0.5}}
    whole, a = _train(tmp_path / "whole", tcfg)
    # killed during iteration 5: the checkpoint of iteration 4 (val_interval 2) holds the
    # schedule one iteration past its first decay
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", tcfg, die_at=5)
    ckpt = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 4 and ckpt["scheduler"]["last_epoch"] == 4
    resumed, b = _train(tmp_path / "killed", tcfg)
    assert resumed == whole[4:]  # iterations 5-9, rates identical (a restarted count would decay at 7)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("value, says", [
    ({"every": 0, "factor": 0.5}, r"params key 'training.lr_decay.every': 0 is less than the minimum of 1"),
    ({"every": 10, "factor": 0}, r"params key 'training.lr_decay.factor': 0 is less than or equal to"),
    ({"every": 10}, r"params key 'training.lr_decay' lacks 'factor'"),
    ({"every": 10, "factor": 0.5, "gamma": 1}, r"params key 'training.lr_decay.gamma' is unknown; allowed: every, factor"),
])
def test_a_bad_lr_decay_is_one_line_naming_the_key(value, says):
    with pytest.raises(UserError, match=says):
        study(tiny_params(training={"lr_decay": value}))
