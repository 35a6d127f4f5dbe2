"""Few-shot protocol choices (docs/protocols.md): training episode sizes, BatchNorm modes,
NIL's two forms and Matching Networks."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mtml.benchmark import random_episode
from mtml.data.storage import PreparedDataset
from mtml.episodes.sampler import ImageBank
from mtml.errors import UserError
from mtml.evaluation.stats import nil_logits
from mtml.methods import build
from mtml.methods.base import Episode
from mtml.methods.matching import AttentionLSTM, SupportContext, cosine_attention

from pipeline_helpers import TINY, tiny_params


def _dataset(classes=30, per_class=8, size=16) -> PreparedDataset:
    """A small in-memory prepared dataset: 20 train, 5 val, 5 test classes of random images."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), per_class)
    split = ["train"] * 20 + ["val"] * 5 + ["test"] * (classes - 25)
    table = pd.DataFrame({"class_id": range(classes), "name": [f"c{i}" for i in range(classes)],
                          "group": [f"c{i}" for i in range(classes)], "split": split,
                          "n_images": per_class})
    images = rng.integers(0, 256, (len(labels), 1, size, size), dtype=np.uint8)
    return PreparedDataset("toy", images, labels, table, {})


# -- item 10: training ways/shots/queries -----------------------------------------------------

def _experiments(**keys):
    exp = copy.deepcopy(TINY["experiments"])
    exp["tiny"].update(keys)
    return exp


def test_training_episodes_have_the_train_sizes_and_tests_keep_theirs(one_thread):
    study = tiny_params(experiments=_experiments(train_ways=8, train_shots=2, train_queries=3),
                        methods={"protonet": {"filters": 4}})
    exp = study.experiment("tiny")
    assert (exp.ways, exp.shots, exp.queries) == (5, 1, 5)
    stream = exp.kind.stream(exp, {"glyphs": ImageBank(_dataset(), torch.device("cpu"))}, seed=0)
    for ep in stream.batch(3):
        assert ep.ways == 8
        assert torch.equal(torch.bincount(ep.support_y), torch.full((8,), 2))
        assert torch.equal(torch.bincount(ep.query_y), torch.full((8,), 3))
    # absent keys: the test sizes, and the stream draws test-sized episodes
    plain = tiny_params(methods={"protonet": {"filters": 4}}).experiment("tiny")
    assert (plain.train_ways, plain.train_shots, plain.train_queries) == (5, 1, 5)
    ep = plain.kind.stream(plain, {"glyphs": ImageBank(_dataset(), torch.device("cpu"))}, 0).sample()
    assert (ep.ways, len(ep.support_y), len(ep.query_y)) == (5, 5, 25)


def test_train_ways_is_refused_for_methods_with_a_ways_wide_head():
    with pytest.raises(UserError, match=r"experiments\.tiny\.train_ways.*5-way head"):
        tiny_params(experiments=_experiments(train_ways=8))  # TINY has maml
    tiny_params(experiments=_experiments(train_shots=3))      # other sizes are fine for MAML


def test_train_sizes_are_checked_against_the_training_split():
    study = tiny_params(experiments=_experiments(train_ways=21), methods={"protonet": {"filters": 4}})
    exp = study.experiment("tiny")
    with pytest.raises(UserError, match=r"train split has 20 classes.*'experiments\.tiny\.train_ways'"):
        exp.kind.check_train_data(exp, _dataset())


# -- item 11: BatchNorm transductive | running ------------------------------------------------

def _query_logits_alone_and_among_others(learner, seed=0):
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.rand(5, 1, 16, 16, generator=g), torch.rand(10, 1, 16, 16, generator=g)
    other = torch.rand(10, 1, 16, 16, generator=g)
    sy = torch.arange(5)
    a = learner.predict(Episode(sx, sy, qx, sy.repeat(2), 5))[0]
    b = learner.predict(Episode(sx, sy, torch.cat([qx[:1], other[1:]]), sy.repeat(2), 5))[0]
    return a, b


@pytest.mark.parametrize("algorithm", ["protonet", "matchingnet"])
def test_running_batch_norm_makes_a_query_independent_of_the_other_queries(algorithm, one_thread):
    torch.manual_seed(0)
    running = build(algorithm, {"filters": 4, "batch_norm": "running"}, (1, 16, 16), 5)
    transductive = build(algorithm, {"filters": 4}, (1, 16, 16), 5)
    opt = torch.optim.Adam(running.parameters(), 1e-2)
    for _ in range(3):  # meta-training moves the running averages away from their start
        running.train_step([random_episode(5, 1, 2, (1, 16, 16))], opt, lambda: [])
    norm = running.backbone.blocks[0].norm
    assert norm.num_batches_tracked == 3 and not torch.allclose(norm.running_mean, torch.zeros(4))
    with torch.no_grad():
        a, b = _query_logits_alone_and_among_others(running.eval())
        assert torch.allclose(a, b, atol=1e-6)
        a, b = _query_logits_alone_and_among_others(transductive.eval())
        assert not torch.allclose(a, b, atol=1e-3)   # transductive: the other queries matter
    assert torch.equal(norm.running_mean, running.backbone.blocks[0].norm.running_mean)  # eval: no update


def test_running_batch_norm_protonet_embeds_support_and_query_as_one_batch():
    """Training mode: one pass over cat([support, query]), as ProtoNet's reference code."""
    torch.manual_seed(0)
    net = build("protonet", {"filters": 4, "batch_norm": "running"}, (1, 16, 16), 5)
    ep = random_episode(5, 1, 3, (1, 16, 16))
    support, query, _ = net.embed_and_logits(ep)
    both = copy.deepcopy(net.backbone)(torch.cat([ep.support_x, ep.query_x]))
    assert torch.allclose(torch.cat([support, query]), both, atol=1e-6)
    assert not torch.allclose(support, copy.deepcopy(net.backbone)(ep.support_x), atol=1e-3)


def test_batched_evaluation_agrees_with_the_loop_under_running_batch_norm(one_thread):
    from mtml.episodes.manifest import build_manifest
    from mtml.evaluation.evaluate import evaluate_manifest

    torch.manual_seed(0)
    net = build("protonet", {"filters": 4, "batch_norm": "running"}, (1, 16, 16), 5)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    net.train_step([random_episode(5, 1, 2, (1, 16, 16))], opt, lambda: [])
    data = _dataset()
    bank = ImageBank(data, torch.device("cpu"))
    manifest = build_manifest(data, "test", 5, 2, 3, 6, seed=1)
    net.eval()
    loop = evaluate_manifest(net, bank, manifest, "t", 1, nil="samples")
    batch = evaluate_manifest(net, bank, manifest, "t", 3, nil="samples")
    pd.testing.assert_frame_equal(loop, batch, atol=1e-4)


# -- item 12: NIL against class means or support samples -------------------------------------

def test_nil_samples_and_means_agree_at_one_shot_and_differ_at_five():
    # 1 shot: each class's mean is its one sample, so both rank the classes alike.
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.2]])
    query = torch.tensor([[0.9, 0.3], [0.1, 1.0], [-1.0, -0.5]])
    y = torch.arange(3)
    assert torch.equal(nil_logits(support, y, query, 3, "means").argmax(-1),
                       nil_logits(support, y, query, 3, "samples").argmax(-1))
    # 5 shots, by hand. Query (1, 0). Class 0: three samples along it (cosine 1), two opposite
    # (cosine -1); its mean (0.2, 0) has cosine 1. Class 1: five samples at (0.6, 0.8), cosine
    # 0.6, mean too. Means: class 0 (1 > 0.6). Samples: class 0 gets 3e + 2/e = 8.89 of the
    # softmax mass, class 1 5e^0.6 = 9.11: class 1.
    q = torch.tensor([[1.0, 0.0]])
    support = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 2 + [[0.6, 0.8]] * 5)
    y = torch.arange(2).repeat_interleave(5)
    assert nil_logits(support, y, q, 2, "means").argmax(-1).item() == 0
    assert nil_logits(support, y, q, 2, "samples").argmax(-1).item() == 1
    e = torch.exp(torch.tensor(1.0))
    w0, w1 = 3 * e + 2 / e, 5 * torch.exp(torch.tensor(0.6))
    assert torch.allclose(torch.exp(nil_logits(support, y, q, 2, "samples")),
                          torch.stack([w0, w1])[None] / (w0 + w1), atol=1e-6)


def _nil_case():
    """The 5-shot case above as an episode whose images are the features (pixel-nn embeds by
    flattening), with a second query (class 1, at its samples) both forms get right: NIL
    accuracy 100% with class means, 50% with support samples."""
    support = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 2 + [[0.6, 0.8]] * 5)
    query = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    y = torch.arange(2)
    ep = Episode(support[:, None, None], y.repeat_interleave(5), query[:, None, None], y, 2)
    manifest = pd.DataFrame({"episode": 0, "role": ["support"] * 10 + ["query"] * 2,
                             "label": [0] * 5 + [1] * 5 + [0, 1], "item": range(12)})
    return ep, manifest


@pytest.mark.parametrize("mode, expected", [("means", 100.0), ("samples", 50.0), (None, 100.0)])
def test_multimodal_kind_scores_nil_in_the_evaluation_nil_form(monkeypatch, mode, expected):
    from types import SimpleNamespace

    import mtml.evaluation.evaluate as evaluate
    from mtml.kinds.multimodal import Multimodal

    ep, manifest = _nil_case()
    monkeypatch.setattr(evaluate, "manifest_episodes", lambda bank, m: iter([(0, ep)]))
    evaluation = {"episode_batch": 1} | ({"nil": mode} if mode else {})  # absent: means
    exp = SimpleNamespace(evaluation=evaluation)
    bank = SimpleNamespace(image_shape=(1, 1, 2), device=torch.device("cpu"))
    frame = Multimodal().score(exp, build("pixel-nn", {}, (1, 1, 2), 2), bank, None, manifest, "t")
    assert frame["nil_accuracy"].tolist() == [expected]


@pytest.mark.parametrize("mode, expected", [("means", 100.0), ("samples", 50.0), (None, 100.0)])
def test_multitask_kind_scores_classification_nil_in_the_evaluation_nil_form(monkeypatch, mode, expected):
    from types import SimpleNamespace

    import mtml.multitask.scoring as scoring
    from mtml.kinds.multitask import Multitask
    from mtml.multitask.data import Subtask
    from mtml.multitask.tasks import TASKS

    ep, manifest = _nil_case()
    sub = Subtask("classification", ep.support_x, ep.support_y, ep.query_x, ep.query_y, "env", 2)
    monkeypatch.setattr(scoring, "manifest_subtasks", lambda bank, task, m: iter([(0, sub)]))

    class Features(nn.Module):  # the subtask's images are its embeddings; predicts class 0
        def predict(self, s):
            return torch.tensor([[1.0, 0.0]]).expand(len(s.query_y), 2)

        def subtask_embeddings(self, s):
            return s.support_x.flatten(1), s.query_x.flatten(1)

    task = TASKS["classification"]
    settings = SimpleNamespace(tasks=[task], thresholds={task.name: 0.0})
    exp = SimpleNamespace(settings=settings, evaluation={"nil": mode} if mode else {})
    spec = SimpleNamespace(keys={"task": task.name})
    frame = Multitask().score(exp, Features(), None, spec, manifest, "t")
    assert frame["nil_accuracy"].tolist() == [expected] and frame["accuracy"].tolist() == [50.0]


# -- item 13: Matching Networks -------------------------------------------------------------

def test_cosine_attention_matches_eqs_1_and_2_by_hand():
    support = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    y = torch.tensor([0, 1, 1])
    query = torch.tensor([[2.0, 0.0]])
    cos = torch.tensor([1.0, 0.0, 2 ** -0.5])
    a = torch.exp(cos) / torch.exp(cos).sum()
    assert torch.allclose(cosine_attention(query, support, y, 2), torch.stack([a[0], a[1] + a[2]])[None])


@pytest.mark.parametrize("fce", [False, True])
def test_matchingnet_loss_is_the_nll_of_the_attention_vote_and_reaches_every_parameter(fce, one_thread):
    torch.manual_seed(0)
    net = build("matchingnet", {"filters": 4, "fce": fce, "fce_steps": 2}, (1, 16, 16), 3)
    ep = random_episode(3, 2, 2, (1, 16, 16))
    loss, stats = net.meta_loss([ep])
    s, q = net.embed_episode(ep)
    probs = cosine_attention(q, s, ep.support_y, 3)
    assert torch.allclose(loss, -torch.log(probs[torch.arange(6), ep.query_y]).mean(), atol=1e-6)
    assert 0 <= stats["acc"] <= 1
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert any(n.startswith("query_context") for n, _ in net.named_parameters()) == fce


def test_full_context_embeddings_follow_the_paper_recurrences():
    torch.manual_seed(0)
    dim = 3
    g_net, f_net = SupportContext(dim), AttentionLSTM(dim)
    support, query = torch.randn(4, dim), torch.randn(2, dim)
    # g(x_i) = g'(x_i) + forward and backward LSTM states, computed step by step
    lstm = g_net.lstm
    fwd = nn.LSTMCell(dim, dim)
    bwd = nn.LSTMCell(dim, dim)
    with torch.no_grad():
        for cell, sfx in ((fwd, ""), (bwd, "_reverse")):
            cell.weight_ih.copy_(getattr(lstm, f"weight_ih_l0{sfx}"))
            cell.weight_hh.copy_(getattr(lstm, f"weight_hh_l0{sfx}"))
            cell.bias_ih.copy_(getattr(lstm, f"bias_ih_l0{sfx}"))
            cell.bias_hh.copy_(getattr(lstm, f"bias_hh_l0{sfx}"))
    h = c = torch.zeros(1, dim)
    hf = []
    for i in range(4):
        h, c = fwd(support[i:i + 1], (h, c))
        hf.append(h)
    h = c = torch.zeros(1, dim)
    hb = [None] * 4
    for i in reversed(range(4)):
        h, c = bwd(support[i:i + 1], (h, c))
        hb[i] = h
    g = support + torch.cat(hf) + torch.cat(hb)
    assert torch.allclose(g_net(support), g, atol=1e-6)
    # f: h_k = LSTM([f', r_{k-1}], h_{k-1}) + f'; r_k = softmax(h_k g^T) g
    h = c = r = torch.zeros(2, dim)
    for _ in range(3):
        h, c = f_net.cell(torch.cat([query, r], -1), (h, c))
        h = h + query
        r = torch.softmax(h @ g.T, -1) @ g
    assert torch.allclose(f_net(query, g, 3), h, atol=1e-6)


def test_matchingnet_trains_on_a_separable_toy_task(one_thread):
    """A few meta-updates on episodes whose classes differ in brightness lift accuracy well
    above chance (1/3): the loss and the attention do learn."""
    torch.manual_seed(0)
    net = build("matchingnet", {"filters": 8}, (1, 16, 16), 3)
    opt = torch.optim.Adam(net.parameters(), 1e-2)

    def episode():
        levels = torch.randperm(6)[:3].float() / 6
        x = lambda n: (levels.repeat_interleave(n)[:, None, None, None]  # noqa: E731
                       + 0.05 * torch.rand(3 * n, 1, 16, 16))
        y = lambda n: torch.arange(3).repeat_interleave(n)  # noqa: E731
        return Episode(x(2), y(2), x(4), y(4), 3)

    for _ in range(40):
        net.train_step([episode() for _ in range(2)], opt, lambda: [])
    with torch.no_grad():
        acc = np.mean([(net.predict(ep).argmax(-1) == ep.query_y).float().mean().item()
                       for ep in [episode() for _ in range(20)]])
    assert acc > 0.8


# -- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_pipeline_with_train_ways_running_bn_matchingnet_and_external_episodes(tmp_path, one_thread):
    """prepare -> episodes -> train -> evaluate with ProtoNet (running BatchNorm) and Matching
    Networks trained 7-way, tested 5-way on an external episode list (by index)."""
    from mtml import stages
    from mtml.data.storage import load_prepared
    from mtml.layout import Layout

    from pipeline_helpers import run_pipeline

    methods = {"protonet": {"filters": 4, "batch_norm": "running"}, "matchingnet": {"filters": 4, "fce": True}}
    small = {"training": {**TINY["training"], "iterations": 4, "val_interval": 2, "val_episodes": 3},
             "evaluation": {"episodes": 4, "nil": "samples"}}
    plain = tiny_params(methods=methods, **small)
    layout = Layout(tmp_path, plain)
    data = load_prepared(stages.prepare(plain, layout, "glyphs"))
    test = data.classes[data.classes["split"] == "test"]
    rows = [{"episode": e, "role": role, "class": name, "index": str(i)}
            for e in range(3) for name in test["name"].iloc[e:e + 5]
            for role, i in (("support", 0), ("query", 1), ("query", 2), ("query", 3), ("query", 4), ("query", 5))]
    pd.DataFrame(rows).to_csv(tmp_path / "external.csv", index=False)
    study = tiny_params(methods=methods, experiments=_experiments(train_ways=7, test_episodes=str(tmp_path / "external.csv")),
                        **small)
    results = run_pipeline(study, tmp_path)
    for meth in methods:
        by_split = {r["split"]: r for r in results[("tiny", meth)]}
        assert by_split["test"]["episodes"] == 3 and by_split["cross-domain"]["episodes"] == 4
        assert by_split["test"]["ways"] == 5
