"""Surrogate gradients: the Heaviside step forward, a smooth stand-in for its derivative backward.

One module-level autograd Function serves every kind (so networks pickle); it keeps the
input's dtype (half precision works) and each derivative stays finite for membranes of any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Each takes the incoming gradient and returns it times dS/dx at x - shift (the recurrence passes the membrane
# and the threshold). They run on whole (time, batch, neurons) tensors, so each works in place on the one
# temporary it makes, in as few passes over memory as it can (atan: three with the shift folded in, against
# seven with one operation per term; 3.1 -> 2.2 ms for 25 x 128 x 1000 on 2 threads, before the fold).


def _fast_sigmoid(grad: torch.Tensor, x: torch.Tensor, slope: float, shift: float = 0.0) -> torch.Tensor:
    """dS/dx = 1 / (slope*|x| + 1)^2  (SuperSpike; Zenke & Ganguli 2018)."""
    d = torch.sub(x, shift).abs_() if shift else torch.abs(x)
    torch.add(d.new_ones(()), d, alpha=slope, out=d)
    return torch.div(grad, d.mul_(d), out=d)


def _atan(grad: torch.Tensor, x: torch.Tensor, slope: float, shift: float = 0.0) -> torch.Tensor:
    """dS/dx = slope/2 / (1 + (pi/2 * slope * x)^2)  (Fang et al. 2021; snnTorch's default, alpha = slope).
    For huge x the square overflows to inf and the derivative is exactly 0, never NaN."""
    k = math.pi / 2 * slope
    d = torch.add(x.new_full((), -k * shift), x, alpha=k) if shift else torch.mul(x, k)  # k*x - k*shift, one pass
    torch.addcmul(d.new_full((), 2 / slope), d, d, value=2 / slope, out=d)  # (1 + d^2) * 2/slope, one pass
    return torch.div(grad, d, out=d)


def _sigmoid(grad: torch.Tensor, x: torch.Tensor, slope: float, shift: float = 0.0) -> torch.Tensor:
    """dS/dx = slope * s * (1 - s), s = sigmoid(slope * x) (torch.sigmoid is stable for any x)."""
    s = torch.sigmoid((x - shift) * slope if shift else x * slope)
    return torch.sub(1.0, s).mul_(s).mul_(grad).mul_(slope)


def _straight_through(grad: torch.Tensor, x: torch.Tensor, slope: float, shift: float = 0.0) -> torch.Tensor:
    """dS/dx = 1: the gradient passes through unchanged."""
    return grad


DERIVATIVES = {"fast_sigmoid": _fast_sigmoid, "atan": _atan, "sigmoid": _sigmoid,
               "straight_through": _straight_through}
KINDS = tuple(DERIVATIVES)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kind, slope):
        ctx.save_for_backward(x)
        ctx.kind, ctx.slope = kind, slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return DERIVATIVES[ctx.kind](grad, x, ctx.slope), None, None


@dataclass(frozen=True)
class Surrogate:
    """A spike function: `Surrogate("fast_sigmoid", 25.0)(membrane - threshold)`."""

    kind: str = "fast_sigmoid"
    slope: float = 25.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _Spike.apply(x, self.kind, self.slope)
