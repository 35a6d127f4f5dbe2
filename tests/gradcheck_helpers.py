"""Meta-gradients against central finite differences (run under the `float64` fixture)."""

import torch


def assert_matches_finite_differences(loss_of, params: dict, eps: float = 1e-6, rtol: float = 1e-5,
                                      atol: float = 1e-8) -> None:
    """autograd's gradient of `loss_of(params)` equals central differences at the first and the
    last entry of every parameter tensor."""
    grads = dict(zip(params, torch.autograd.grad(loss_of(params), list(params.values()))))
    for name, p in params.items():
        for idx in [(0,) * p.dim(), tuple(s - 1 for s in p.shape)]:
            plus = {k: v.detach().clone() for k, v in params.items()}
            minus = {k: v.detach().clone() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (loss_of(plus) - loss_of(minus)) / (2 * eps)
            assert torch.isclose(grads[name][idx], fd, rtol=rtol, atol=atol), name
