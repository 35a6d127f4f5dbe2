"""One functional adaptation loop shared by every gradient-based method.

The loop runs on a parameter dict with `torch.func.functional_call`, so the same code gives
second-order MAML (`create_graph=True`), first-order MAML, ANIL (adapt a sub-module only),
per-parameter learning rates (MetaSGD: `lr` is a dict of tensors) and learned optimizers
(MetaLSTM: `update` replaces the SGD step).

Inside `functional_grads()` the loop takes its gradients with `torch.func.grad` instead of
`torch.autograd.grad`, so it can run under `torch.func.vmap` (many tasks at once, see
`mtml.methods.parallel`); outer autograd still differentiates through it (second order).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtml.utils import switched_on

Params = dict[str, Tensor]
# update(step, params, grads, loss) -> new params; the default is plain SGD.
UpdateRule = Callable[[int, Params, Params, Tensor], Params]


_FUNCTIONAL = contextvars.ContextVar("functional_grads", default=False)


def functional_grads() -> contextlib.AbstractContextManager[None]:
    """`adapt` calls inside take torch.func.grad gradients (vmap-safe)."""
    return switched_on(_FUNCTIONAL)


def named_params(module: nn.Module, prefix: str = "") -> Params:
    return {k: v for k, v in module.named_parameters() if k.startswith(prefix)}


def sgd_update(lr: float | Mapping[str, Tensor]) -> UpdateRule:
    def update(step: int, params: Params, grads: Params, loss: Tensor) -> Params:
        if isinstance(lr, Mapping):
            return {k: p - lr[k] * grads[k] for k, p in params.items()}
        return {k: p - lr * grads[k] for k, p in params.items()}

    return update


def adapt(
    module: nn.Module,
    params: Params,
    inputs: Tensor,
    targets: Tensor,
    steps: int,
    update: UpdateRule,
    first_order: bool = False,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
    frozen: Mapping[str, Tensor] | None = None,
    create_graph: bool | None = None,
) -> Params:
    """Take `steps` gradient steps on (inputs, targets) from `params`; return the new dict.

    `frozen` holds parameters used in the forward pass but not adapted (e.g. the backbone
    while ANIL adapts the head). With `first_order`, gradients are taken without a graph,
    so the meta-gradient treats them as constants (FOMAML).
    """
    frozen = dict(frozen or {})
    if create_graph is None:
        create_graph = not first_order and torch.is_grad_enabled()
    functional = _FUNCTIONAL.get()
    for step in range(steps):
        if functional:
            def task_loss(p: Params) -> tuple[Tensor, Tensor]:
                loss = loss_fn(functional_call(module, {**frozen, **p}, (inputs,)), targets)
                return loss, loss

            # torch.func.grad ignores an outer no_grad and stays differentiable by outer
            # autograd; dropping that graph is what first order means here too.
            grads, loss = torch.func.grad(task_loss, has_aux=True)(params)
            if first_order or not create_graph:
                grads = {k: g.detach() for k, g in grads.items()}
            params = update(step, params, grads, loss)
            continue
        with torch.enable_grad():
            if not params or next(iter(params.values())).requires_grad is False:
                params = {k: v.detach().requires_grad_() for k, v in params.items()}
            loss = loss_fn(functional_call(module, {**frozen, **params}, (inputs,)), targets)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        grads = dict(zip(params.keys(), grads))
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = update(step, params, grads, loss)
    return params
