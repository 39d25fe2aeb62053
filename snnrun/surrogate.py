"""Surrogate gradients: the Heaviside step forward, a smooth stand-in for its derivative backward.

Each is a module-level autograd Function (so networks pickle), keeps the input's
dtype (half precision works) and stays finite for membranes of any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("fast_sigmoid", "atan", "sigmoid", "straight_through")


class _FastSigmoid(torch.autograd.Function):
    """dS/dx = 1 / (slope*|x| + 1)^2  (SuperSpike; Zenke & Ganguli 2018)."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (ctx.slope * x.abs() + 1.0).square(), None


class _ATan(torch.autograd.Function):
    """dS/dx = alpha/2 / (1 + (pi/2 * alpha * x)^2)  (Fang et al. 2021; snnTorch's default, alpha = slope)."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        # (pi/2*a*x)^2 overflows to inf for huge x, giving a gradient of exactly 0, never NaN
        return grad * (ctx.slope / 2) / (1 + (math.pi / 2 * ctx.slope * x).square()), None


class _Sigmoid(torch.autograd.Function):
    """dS/dx = slope * s * (1 - s), s = sigmoid(slope * x) (torch.sigmoid is stable for any x)."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(ctx.slope * x)
        return grad * ctx.slope * s * (1 - s), None


class _StraightThrough(torch.autograd.Function):
    """dS/dx = 1: the gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, x, slope):
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


_FUNCTIONS = {"fast_sigmoid": _FastSigmoid, "atan": _ATan, "sigmoid": _Sigmoid, "straight_through": _StraightThrough}


@dataclass(frozen=True)
class Surrogate:
    """A spike function: `Surrogate("fast_sigmoid", 25.0)(membrane - threshold)`."""

    kind: str = "fast_sigmoid"
    slope: float = 25.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _FUNCTIONS[self.kind].apply(x, self.slope)
