"""`mtml benchmark --against learn2learn`: our MAML and ANIL against learn2learn 0.2.0's, side
by side in one process, interleaved, on the same random episodes, network and settings.

learn2learn is optional (the `bench` extra). Its 0.2.0 source release does not build on
Python >= 3.11 as published (the shipped .c files come from an old Cython); README, "Against
learn2learn", gives the recipe: regenerate the .c files with `cython<3.1`, build a wheel, and
install it with gym (imported by learn2learn at import time). Without it this says so and
stops.

Two comparisons, the same inner learning rate and steps, first/second order and Adam outer
loop in both:
- machinery: learn2learn wraps a deep copy of our very `Classifier` (Conv-4 + linear head,
  BatchNorm on batch statistics), so the ratio measures the meta-learning code alone;
- as shipped: learn2learn wraps its own Conv-4 of the same shape (`l2l.vision.models.CNN4`
  with `filters` channels, max-pooling, the input's channels), what a learn2learn user runs;
  the ratio adds what our network does differently (its CPU max-pool, `conv4.max_pool`,
  and ReLU after the pool; the same numbers).
  That network keeps BatchNorm running averages; like learn2learn's MAML examples, it stays
  in train mode when evaluating, so both sides normalise by the episode's own statistics.
learn2learn's ANIL is its documented recipe: the backbone outside, `l2l.algorithms.MAML`
around the head. ProtoNet is left out: learn2learn has no ProtoNet algorithm (its example is
plain PyTorch, the same as ours).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mtml.benchmark import device_info, interleaved, random_episode, random_training
from mtml.errors import UserError
from mtml.methods.base import LearnerContext, build_learner
from mtml.methods.parallel import EpisodeBatch, batch_outputs, resolve_task_parallel

ALGORITHMS = ("maml", "anil")


def import_learn2learn():
    try:
        import learn2learn
    except ImportError as err:
        raise UserError(f"learn2learn is not importable ({err}); it is the optional `bench` extra, "
                        "built as README 'Against learn2learn' says") from None
    return learn2learn


def l2l_step(l2l_model, features, opt, batch, steps: int, first_order: bool) -> float:
    """One learn2learn meta-update in the style of its examples (clone, adapt, query loss)."""
    opt.zero_grad(set_to_none=True)
    total = 0.0
    for ep in batch:
        learner = l2l_model.clone()
        s_in, q_in = ep.support_x, ep.query_x
        if features is not None:
            s_in, q_in = features(s_in), features(q_in)
        for _ in range(steps):
            learner.adapt(nn.functional.cross_entropy(learner(s_in), ep.support_y), first_order=first_order)
        loss = nn.functional.cross_entropy(learner(q_in), ep.query_y) / len(batch)
        loss.backward()
        total += float(loss.detach())
    opt.step()
    return total


def l2l_predict(l2l_model, features, ep, steps: int):
    """learn2learn's adaptation and query prediction (first order: nothing differentiates it)."""
    learner = l2l_model.clone()
    s_in, q_in = ep.support_x, ep.query_x
    if features is not None:
        with torch.no_grad():
            s_in, q_in = features(s_in), features(q_in)
    for _ in range(steps):
        learner.adapt(nn.functional.cross_entropy(learner(s_in), ep.support_y), first_order=True)
    with torch.no_grad():
        return learner(q_in)


def against_learn2learn(study, experiment: str, repeats: int = 5, iterations: int = 3,
                        episodes: int = 8, meta_batch: int | None = None, image_size: int | None = None) -> dict:
    l2l = import_learn2learn()
    device, exp, shape, size, batches = random_training(study, experiment, iterations, image_size, meta_batch)
    ways, shots, queries = exp.ways, exp.shots, exp.queries
    eval_eps = [random_episode(ways, shots, queries, shape, device) for _ in range(episodes)]
    runs = [study.run(experiment, m) for m in study.methods]
    rows = [_compare_method(l2l, run, shape, ways, batches, eval_eps, repeats, device)
            for run in runs if run.cls.algorithm in ALGORITHMS]
    return {**device_info(device),
            "learn2learn": l2l.__version__,
            "setting": {"experiment": experiment, "ways": ways, "shots": shots, "queries": queries,
                        "image_shape": list(shape), "meta_batch": size, "repeats": repeats,
                        "train_iterations_per_call": iterations, "eval_episodes_per_call": episodes},
            "rows": rows}


class _L2LSide:
    """learn2learn's MAML around one network: the whole net (MAML) or its head (ANIL)."""

    def __init__(self, l2l, net: nn.Module, backbone: nn.Module, head: nn.Module, hp: dict, head_only: bool):
        self.hp = hp
        self.maml = l2l.algorithms.MAML(head if head_only else net, lr=hp["inner_lr"], first_order=hp["first_order"])
        self.features = backbone if head_only else None
        self.opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def train(self, batches) -> None:
        for b in batches:
            l2l_step(self.maml, self.features, self.opt, b, self.hp["inner_steps"], self.hp["first_order"])

    def evaluate(self, episodes) -> None:
        for ep in episodes:
            l2l_predict(self.maml, self.features, ep, self.hp["eval_inner_steps"])


def l2l_network(l2l, ours: nn.Module, shape, ways: int) -> nn.Module:
    """learn2learn's own Conv-4 of our network's shape (filters, max-pooling, feature size)."""
    return l2l.vision.models.CNN4(ways, hidden_size=ours.backbone.filters, layers=4, channels=shape[0],
                                  max_pool=True, embedding_size=ours.head.in_features)


def _compare_method(l2l, run, shape, ways, batches, eval_eps, repeats, device) -> dict:
    torch.manual_seed(0)
    name = run.method
    ours = build_learner(run, LearnerContext(shape, ways)).to(device)
    # as training runs it: `training.task_parallel` (auto: vmap on CUDA, the loop on CPU)
    ours.task_parallel = resolve_task_parallel(run.training.get("task_parallel", "auto"), device)
    hp = ours.hp
    net = copy.deepcopy(ours.net)  # the same initial network for learn2learn
    theirs = _L2LSide(l2l, net, net.backbone, net.head, hp, ours.head_only)
    shipped_net = l2l_network(l2l, ours.net, shape, ways).to(device)
    shipped = _L2LSide(l2l, shipped_net, shipped_net.features, shipped_net.classifier, hp, ours.head_only)
    opt_ours = ours.make_optimizer(1e-3)
    train = {
        "mtml": lambda: [ours.train_step(b, opt_ours, lambda b=b: b) for b in batches],
        "learn2learn": lambda: theirs.train(batches),
        "learn2learn_cnn4": lambda: shipped.train(batches),
    }
    med_train = interleaved(train, repeats, device)
    ours.eval()
    net.eval()  # (shipped_net stays in train mode: batch statistics, as learn2learn's examples)

    def ours_eval():
        with torch.no_grad():
            for ep in eval_eps:
                ours.predict(ep)

    stacked = EpisodeBatch.stack(eval_eps)

    def ours_batched():  # the evaluation stage's batched path, all episodes in one call
        with torch.no_grad():
            batch_outputs(ours, stacked, hp["eval_inner_steps"], first_order=True)

    evaluate = {"mtml": ours_eval, "mtml_batched": ours_batched,
                "learn2learn": lambda: theirs.evaluate(eval_eps),
                "learn2learn_cnn4": lambda: shipped.evaluate(eval_eps)}
    med_eval = interleaved(evaluate, repeats, device)
    iterations, episodes = len(batches), len(eval_eps)

    def ratio(med, base, ours_key="mtml", clock="wall"):
        return round(med[base][clock] / med[ours_key][clock], 3)

    return {
        "method": name, "algorithm": ours.algorithm,
        **{f"train_it_per_s_{k}": round(iterations / v["wall"], 3) for k, v in med_train.items()},
        "train_ours_over_l2l": ratio(med_train, "learn2learn"),
        "train_ours_over_l2l_cpu_time": ratio(med_train, "learn2learn", clock="cpu"),
        "train_ours_over_l2l_cnn4": ratio(med_train, "learn2learn_cnn4"),
        **{f"eval_episodes_per_s_{k}": round(episodes / v["wall"], 2) for k, v in med_eval.items()},
        "eval_ours_over_l2l": ratio(med_eval, "learn2learn"),
        "eval_ours_batched_over_l2l": ratio(med_eval, "learn2learn", "mtml_batched"),
        "eval_ours_over_l2l_cnn4": ratio(med_eval, "learn2learn_cnn4"),
        "task_parallel": ours.task_parallel,
    }


def print_against(result: dict) -> None:
    s = result["setting"]
    print(f"mtml vs learn2learn {result['learn2learn']} on {result['device']} ({result['torch_threads']} threads): "
          f"{s['ways']}-way {s['shots']}-shot, images {s['image_shape']}, meta-batch {s['meta_batch']}; "
          f"medians of {s['repeats']} interleaved repeats; Conv-4 CPU kernels: {result['cpu_kernels']}")
    for r in result["rows"]:
        print(f"{r['method']:>8} | train it/s mtml ({r['task_parallel']}) {r['train_it_per_s_mtml']:.2f} learn2learn "
              f"{r['train_it_per_s_learn2learn']:.2f} (x{r['train_ours_over_l2l']:.2f}) | eval episodes/s mtml "
              f"loop {r['eval_episodes_per_s_mtml']:.1f} (x{r['eval_ours_over_l2l']:.2f}), batched "
              f"{r['eval_episodes_per_s_mtml_batched']:.1f} (x{r['eval_ours_batched_over_l2l']:.2f}), "
              f"learn2learn {r['eval_episodes_per_s_learn2learn']:.1f}")
        print(f"{'':>8} | as shipped, learn2learn on its CNN4: train it/s {r['train_it_per_s_learn2learn_cnn4']:.2f} "
              f"(mtml x{r['train_ours_over_l2l_cnn4']:.2f}) | eval episodes/s "
              f"{r['eval_episodes_per_s_learn2learn_cnn4']:.1f} (mtml loop x{r['eval_ours_over_l2l_cnn4']:.2f})")
