"""Learned optimisers: Meta-LSTM (Ravi & Larochelle 2017) and MetaLSTM++ (Aimen et al. 2021).

A two-layer LSTM replaces the SGD step of the inner loop. It runs once per parameter
coordinate, with its weights shared across coordinates:

1. an LSTM cell reads the preprocessed gradient and loss of each coordinate (Andrychowicz et
   al. 2016, Appendix A) and carries its hidden state across the inner steps;
2. a gated cell whose cell state *is* the learner's parameter vector:
   f_t = sigmoid(W_f [h_t, theta_{t-1}, f_{t-1}] + b_f),
   i_t = sigmoid(W_i [h_t, theta_{t-1}, i_{t-1}] + b_i),
   theta_t = f_t * theta_{t-1} - i_t * grad_t.
   The forget gate f_t is a learned weight decay and the input gate i_t a learned
   per-coordinate learning rate.

The initial parameters theta_0 (the classifier's weights, as in MAML) are meta-learned with
the LSTM. As in Ravi & Larochelle, the meta-gradient ignores the second derivatives of the
learner's loss (`first_order: true`): gradient and loss enter the LSTM as inputs only, and
the meta-gradient flows through the gates and the cell-state path.

`metalstm` is the paper's sequential regimen: the meta-model is updated after every task.
`metalstm++` meta-trains the same optimiser on the mean query loss of a meta-batch (one
update per batch), which is what task attention plugs into.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mtml.methods.base import register
from mtml.methods.gradient import MAML
from mtml.methods.inner_loop import Params, UpdateRule
from mtml.options import Option


def preprocess(x: Tensor, p: float = 10.0) -> Tensor:
    """Andrychowicz et al.'s scale-free encoding: x -> (log|x| / p, sign x) if |x| >= e^-p,
    else (-1, e^p x). Returns x's shape with a trailing dimension of 2."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), math.exp(p) * x)
    return torch.stack([first, second], -1)


class ParameterGates(nn.Module):
    """The second LSTM layer: the forget and input gates of the parameter cell."""

    def __init__(self, hidden: int, inner_lr: float, forget_bias: float):
        super().__init__()
        self.forget = nn.Linear(hidden + 2, 1)
        self.input = nn.Linear(hidden + 2, 1)
        # Small weights and biases that start the rule near SGD: f ~ 1 (no decay) and
        # i ~ inner_lr (Ravi & Larochelle start i near a small learning rate the same way).
        for lin in (self.forget, self.input):
            nn.init.uniform_(lin.weight, -0.01, 0.01)
        nn.init.constant_(self.forget.bias, forget_bias)
        nn.init.constant_(self.input.bias, math.log(inner_lr / (1 - inner_lr)))

    def forward(self, h: Tensor, theta: Tensor, f_prev: Tensor, i_prev: Tensor) -> tuple[Tensor, Tensor]:
        f = torch.sigmoid(self.forget(torch.cat([h, theta, f_prev], 1)))
        i = torch.sigmoid(self.input(torch.cat([h, theta, i_prev], 1)))
        return f, i


def gated_step(theta: Tensor, grad: Tensor, f: Tensor, i: Tensor) -> Tensor:
    """The parameter cell's update, theta_t = f_t * theta_{t-1} - i_t * grad_t."""
    return f * theta - i * grad


class LSTMOptimizer(nn.Module):
    """Coordinate-wise two-layer LSTM update rule; `rule()` gives a fresh `UpdateRule`."""

    def __init__(self, hidden: int, inner_lr: float, forget_bias: float):
        super().__init__()
        self.hidden = hidden
        self.encoder = nn.LSTMCell(4, hidden)  # input: preprocessed (grad, loss) per coordinate
        self.gates = ParameterGates(hidden, inner_lr, forget_bias)

    def rule(self) -> UpdateRule:
        state: dict[str, Tensor] = {}  # LSTM (h, c) and previous gates, per coordinate

        def update(step: int, params: Params, grads: Params, loss: Tensor) -> Params:
            names = list(params)
            theta = torch.cat([params[k].reshape(-1) for k in names])[:, None]
            grad = torch.cat([grads[k].reshape(-1) for k in names])[:, None]
            n = theta.shape[0]
            x = torch.cat([preprocess(grad.detach()).reshape(n, 2),
                           preprocess(loss.detach().reshape(1)).expand(n, 2)], 1)
            if not state:
                zeros = theta.new_zeros(n, self.hidden)
                state.update(h=zeros, c=zeros, f=theta.new_zeros(n, 1), i=theta.new_zeros(n, 1))
            state["h"], state["c"] = self.encoder(x, (state["h"], state["c"]))
            state["f"], state["i"] = self.gates(state["h"], theta, state["f"], state["i"])
            new = gated_step(theta, grad, state["f"], state["i"])
            out, offset = {}, 0
            for k in names:
                size = params[k].numel()
                out[k] = new[offset:offset + size].view_as(params[k])
                offset += size
            return out

        return update


@register("metalstm")
class MetaLSTM(MAML):
    options = {
        "filters": Option(int, 32, "conv filters per layer of the Conv-4 backbone", min=1),
        "inner_lr": Option(float, 0.1, "the input gate's initial value (a learning rate)",
                           min=0, above=True, max=1, below=True),
        "inner_steps": Option(int, 5, "inner-loop steps in meta-training", min=0),
        "eval_inner_steps": Option(int, 5, "inner-loop steps at evaluation (the LSTM is trained "
                                   "for inner_steps; more is extrapolation)", min=0),
        "first_order": Option(bool, True, "ignore the loss's second derivatives (Ravi & Larochelle)"),
        "hidden": Option(int, 20, "encoder LSTM units (Ravi & Larochelle: 20)", min=1),
        "forget_bias": Option(float, 5.0, "initial forget-gate bias: f = sigmoid(5) ~ 0.993"),
        "grad_clip": Option(float, 0.25, "meta-gradient norm clip (Ravi & Larochelle; 0 = off)", min=0),
    }
    sequential = True  # update the meta-model after every task

    def __init__(self, hp, image_shape, ways):
        super().__init__(hp, image_shape, ways)
        self.optimizer_net = LSTMOptimizer(hp["hidden"], hp["inner_lr"], hp["forget_bias"])

    def inner_update(self) -> UpdateRule:
        return self.optimizer_net.rule()

    def clip_gradients(self) -> None:
        if self.hp["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(self.parameters(), self.hp["grad_clip"])

    def train_step(self, batch, optimizer, sample_batch):
        # metalstm: one meta-update per task (Ravi & Larochelle); metalstm++: one per batch
        groups = [[ep] for ep in batch] if self.sequential else [batch]
        losses, accs = [], []
        for group in groups:
            optimizer.zero_grad(set_to_none=True)
            loss, stats = self.meta_loss(group)
            loss.backward()
            self.clip_gradients()
            optimizer.step()
            losses.append(float(loss.detach()))
            accs.append(stats["acc"])
        # the loss of every meta-update, in order (trace.jsonl; the metalstm-oscillation analysis)
        return {"loss": sum(losses) / len(losses), "acc": sum(accs) / len(accs),
                "trace": {"update_losses": [round(v, 6) for v in losses]}}


@register("metalstm++")
class MetaLSTMPlusPlus(MetaLSTM):
    """MetaLSTM meta-trained on the mean query loss of a meta-batch (Aimen et al. 2021)."""

    sequential = False
