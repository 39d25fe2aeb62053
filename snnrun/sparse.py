"""Linear layers fed with spikes: work only where there are spikes.

A spike tensor is mostly zeros (MNIST rate-coded: 13 % ones; hidden layers often fewer), and a zero multiplies
nothing. So on the CPU, below a measured density, the layer gathers instead of multiplying:

    forward:          out[n]    = sum of x[n, i] * W[:, i] over the nonzero x[n, i]     (embedding_bag, sum)
    weight gradient:  dW[:, i]  = sum of x[n, i] * grad[n] over the same nonzeros        (embedding_bag, sum)

both from one `nonzero` of the input. The input gradient (when the spikes come from a layer that learns) is the
usual dense `grad @ W`. Above the density (or on a GPU, or for narrow layers such as a 10-class readout) it is
plain `F.linear`. Sums run in a different order than a BLAS GEMM, so results agree to float32 rounding
(`tests/test_sparse.py`); `benchmarks/run.py` measures the cross-over density that `DENSE_ABOVE` comes from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

DENSE_ABOVE = 0.2  # spike density above which the dense GEMM is faster (benchmarks/run.py: equal at 20 % here)
MIN_WIDTH = 64  # outputs below this: the gather of short rows loses to the GEMM


def _offsets(sorted_index: Tensor, bags: int) -> Tensor:
    """Start of each bag in an index list sorted by bag."""
    counts = torch.bincount(sorted_index, minlength=bags)
    return torch.cumsum(counts, 0) - counts


def _bag(indices: Tensor, table: Tensor, offsets: Tensor, values: Tensor, uniform: bool) -> Tensor:
    """Sum of values[k] * table[indices[k]] per bag; with one shared value (spikes: all 1, or 1/(1-p) after
    dropout) as an unweighted sum times that value, which is a third faster."""
    if uniform:
        out = F.embedding_bag(indices, table, offsets, mode="sum")
        return out if values[0] == 1 else out.mul_(values[0])
    return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=values)


class _SpikeLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        n, inputs = x.shape
        flat = torch.nonzero(x.reshape(-1)).squeeze(1)  # sorted by row
        values = x.reshape(-1).index_select(0, flat)
        rows = torch.div(flat, inputs, rounding_mode="floor")
        cols = flat - rows * inputs
        uniform = bool((values == values[0]).all()) if len(values) else True
        out = _bag(cols, weight.t().contiguous(), _offsets(rows, n), values, uniform)
        if bias is not None:
            out.add_(bias)
        ctx.save_for_backward(rows, cols, values, weight)
        ctx.inputs, ctx.uniform = inputs, uniform
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, cols, values, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight
        if ctx.needs_input_grad[1]:
            order = torch.argsort(cols, stable=True)
            by_input = _bag(rows[order], grad.contiguous(), _offsets(cols[order], ctx.inputs),
                            values if ctx.uniform else values[order], ctx.uniform)
            grad_w = by_input.t().contiguous()
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b


def uses_gather(x: Tensor, out_features: int) -> bool:
    """Whether `spike_linear` gathers for this input (CPU, wide layer, sparse enough)."""
    if x.device.type != "cpu" or out_features < MIN_WIDTH or x.numel() == 0:
        return False
    sample = x.reshape(-1)[::16]  # an estimate is enough to choose, at 1/16 of the cost of counting all
    return int(torch.count_nonzero(sample)) <= DENSE_ABOVE * sample.numel()


def spike_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear(x, weight, bias), gathering over the nonzeros of x where that is faster."""
    if not uses_gather(x, weight.shape[0]):
        return F.linear(x, weight, bias)
    out = _SpikeLinear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])
