"""Evaluation in batches of episodes: `evaluation.episode_batch` fixed episodes per call.

The manifest becomes index arrays once; each batch is one gather of its images, the learner's
per-task code under `torch.func.vmap` (`mtml.methods.parallel`), and NIL from the features the
prediction already computed (ProtoNet's embeddings, ANIL's backbone features; MAML adapts its
backbone, so its NIL features are one more vmapped pass of the meta-backbone). Per-episode
accuracies equal the loop's (`episode_batch: 1`, the reference) up to float rounding, which
can flip an argmax on a near-tie; tests/test_parallel.py compares the two.

The reference loop reuses NIL's features too (`predict_with_features`), bit for bit.
On a CPU the loop is the faster one (vmap'd Conv-4 is memory-bound there, and MAML's
per-episode weights turn its convolutions into slow grouped ones), so `auto` picks it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import vmap

from mtml.episodes.manifest import ManifestArrays
from mtml.episodes.sampler import ImageBank
from mtml.evaluation.stats import nil_logits
from mtml.methods import parallel
from mtml.methods.base import MetaLearner

# Episodes per batch with `episode_batch: auto`. CPU: 1, the loop (batches of 2-8 measured
# 0.6-0.8x the loop for MAML, below it for ProtoNet and ANIL; README, "Speed options");
# CUDA: as many as a quarter of the free memory holds by the estimate below, at most
# MAX_CUDA_BATCH (not yet measured on a GPU: scripts/gpu_check.sh does).
CPU_BATCH = 1
MAX_CUDA_BATCH = 256


def supports(learner: MetaLearner) -> bool:
    return parallel.family(learner) is not None


def resolve_episode_batch(setting: int | str, learner: MetaLearner, arrays: ManifestArrays,
                          image_shape, device: torch.device) -> int:
    """`evaluation.episode_batch` as a number: an int stays, `auto` picks per device."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return CPU_BATCH
    images = arrays.support[0].size + arrays.query[0].size
    # float32 activations of the first (largest) block, ~8 live copies per image (conv,
    # norm, relu, pool and, while adapting, their gradients)
    per_episode = images * learner.hp.get("filters", 32) * image_shape[1] * image_shape[2] * 4 * 8
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(MAX_CUDA_BATCH, free // 4 // per_episode)))


def predict_with_features(learner: MetaLearner, ep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One episode's query logits and NIL features (support, query). Where the prediction
    computes NIL's features itself (ProtoNet's embeddings, ANIL's meta-backbone features)
    they are reused: the same operations on the same tensors, so bit for bit what a second
    pass would give, in half the time."""
    from mtml.evaluation.evaluate import episode_embeddings

    kind = parallel.family(learner)
    if kind == "metric":
        support, query, logits = learner.embed_and_logits(ep)
        return logits, support, query
    if kind == "gradient" and learner.head_only:  # what `predict` runs, keeping the features
        o = learner.adapt_task(ep, learner.hp["eval_inner_steps"], first_order=True)
        return o.logits.detach(), o.support_in, o.query_in
    return (learner.predict(ep), *episode_embeddings(learner, ep))


def _labels(ways: int, per_class: int, episodes: int, device) -> torch.Tensor:
    return torch.arange(ways, device=device).repeat_interleave(per_class).expand(episodes, -1)


def evaluate_batches(learner: MetaLearner, bank: ImageBank, arrays: ManifestArrays, episode_batch: int,
                     advance=lambda n: None, nil: str = "means") -> list[dict]:
    """Rows {episode, accuracy, nil_accuracy} (in %) of every episode, `episode_batch` at a time."""
    steps = learner.hp.get("eval_inner_steps", 0) if parallel.family(learner) == "gradient" else 0
    ways = arrays.support.shape[1]
    shape = bank.image_shape
    rows = []
    for start in range(0, len(arrays.episodes), episode_batch):
        sup, qry = arrays.support[start:start + episode_batch], arrays.query[start:start + episode_batch]
        n = len(sup)
        batch = parallel.EpisodeBatch(bank.gather(sup).view(n, -1, *shape), _labels(ways, sup.shape[2], n, bank.device),
                                      bank.gather(qry).view(n, -1, *shape), _labels(ways, qry.shape[2], n, bank.device),
                                      ways)
        out = parallel.batch_outputs(learner, batch, steps, first_order=True, features=True)
        acc = (out.logits.argmax(-1) == batch.query_y).float().mean(-1)
        nil_out = vmap(nil_logits, in_dims=(0, 0, 0, None, None))(out.support_features, batch.support_y,
                                                                   out.query_features, ways, nil)
        nil_acc = (nil_out.argmax(-1) == batch.query_y).float().mean(-1)
        for ep, a, b in zip(arrays.episodes[start:start + n].tolist(), acc.tolist(), nil_acc.tolist()):
            rows.append({"episode": int(ep), "accuracy": 100 * a, "nil_accuracy": 100 * b})
        advance(n)
    return rows


# Images embedded per backbone call when every image is embedded once (below).
EMBED_CHUNK = 1024


def embeds_once(learner: MetaLearner) -> bool:
    """True when an image's embedding does not depend on its episode: a metric learner whose
    BatchNorm normalises with running statistics (`batch_norm: running`) in eval mode."""
    return (parallel.family(learner) == "metric" and learner.hp.get("batch_norm") == "running"
            and not learner.training)


def evaluate_embedded_once(learner: MetaLearner, bank: ImageBank, arrays: ManifestArrays,
                           advance=lambda n: None, nil: str = "means", block: int = 256) -> list[dict]:
    """Rows {episode, accuracy, nil_accuracy} (in %), embedding each test image ONCE for all
    episodes (a test split's images appear in many of its 600 episodes), then prototypes,
    logits and NIL per episode from the stored embeddings, `block` episodes at a time. The
    same functions as the per-episode path on the same embeddings, up to the backbone's
    float rounding across batch compositions (tests/test_parallel.py compares them)."""
    from mtml.methods.metric import prototypes, squared_euclidean_logits

    items, inverse = np.unique(np.concatenate([arrays.support.ravel(), arrays.query.ravel()]), return_inverse=True)
    table = torch.cat([learner.embed(bank.gather(items[i:i + EMBED_CHUNK]))
                       for i in range(0, len(items), EMBED_CHUNK)])
    n_sup = arrays.support.size
    sup_pos = torch.as_tensor(inverse[:n_sup].reshape(arrays.support.shape), device=table.device)
    qry_pos = torch.as_tensor(inverse[n_sup:].reshape(arrays.query.shape), device=table.device)
    n_eps, ways, shots = arrays.support.shape
    rows = []
    for start in range(0, n_eps, block):
        sup, qry = sup_pos[start:start + block], qry_pos[start:start + block]
        n = len(sup)
        s, q = table[sup.reshape(n, -1)], table[qry.reshape(n, -1)]  # [n, ways*shots|queries, D]
        s_y, q_y = _labels(ways, shots, n, table.device), _labels(ways, qry.shape[2], n, table.device)
        logits = vmap(lambda s_, y_, q_: squared_euclidean_logits(q_, prototypes(s_, y_, ways)))(s, s_y, q)
        acc = (logits.argmax(-1) == q_y).float().mean(-1)
        nil_out = vmap(nil_logits, in_dims=(0, 0, 0, None, None))(s, s_y, q, ways, nil)
        nil_acc = (nil_out.argmax(-1) == q_y).float().mean(-1)
        for ep, a, b in zip(arrays.episodes[start:start + n].tolist(), acc.tolist(), nil_acc.tolist()):
            rows.append({"episode": int(ep), "accuracy": 100 * a, "nil_accuracy": 100 * b})
        advance(n)
    return rows
