"""Linear layers fed with spikes: work only where the spikes change.

A spike tensor is mostly zeros (MNIST rate-coded: 13 % ones; hidden layers often fewer), and a zero multiplies
nothing. So on the CPU, below a measured density, the layer gathers instead of multiplying:

    forward:          out[n]    = sum of x[n, i] * W[:, i] over the nonzero x[n, i]     (embedding_bag, sum)
    weight gradient:  dW[:, i]  = sum of x[n, i] * grad[n] over the same nonzeros        (embedding_bag, sum)

both from one `nonzero`. Over time (x is (time, batch, in)) it goes further: an input that is on at most steps
(a bright pixel under rate coding fires at nearly every step) is written as its majority value r[b, i] minus
the steps where it is off, x[t] = r + (x[t] - r), so

    out[t, b] = W r[b] + b  +  sum over the nonzero (x[t, b] - r[b]) of W[:, i] * (x[t, b, i] - r[b, i])
    dW        = (sum over t of grad[t])^T r  +  the gathered sum over the same nonzeros

where W r is one small (batch x in) matrix multiply for all steps. For rate-coded MNIST the changes
x[t] - r are 2.6 % dense against 13 % for x itself, and the first layer's forward + weight gradient takes
22 ms against 41-48 ms gathered over x and 55-57 ms dense (784 -> 1,000, 25 steps, batch 128, 2 threads).

The input gradient (when the spikes come from a layer that learns) is the usual dense `grad @ W`. Above the
density (or on a GPU, or for narrow layers such as a 10-class readout) it is plain `F.linear`. Sums run in a
different order than a BLAS GEMM, so results agree to float32 rounding (`tests/test_sparse.py`);
`benchmarks/run.py` measures the cross-over density that `DENSE_ABOVE` comes from.
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
    """F.linear(x, weight, bias) for x (N, in) computed from changes = x - reference: reference is None or
    (batch, in) with N = steps * batch rows in time-major order."""

    @staticmethod
    def forward(ctx, x, weight, bias, changes, reference):
        n, inputs = changes.shape
        flat = torch.nonzero(changes.reshape(-1)).squeeze(1)  # sorted by row
        values = changes.reshape(-1).index_select(0, flat)
        rows = torch.div(flat, inputs, rounding_mode="floor")
        cols = flat - rows * inputs
        uniform = bool((values == values[0]).all()) if len(values) else True
        out = _bag(cols, weight.t().contiguous(), _offsets(rows, n), values, uniform)
        if reference is not None:  # the majority values' share, the same at every step: one small matmul
            base = F.linear(reference, weight, bias)
            out.view(-1, *base.shape).add_(base)
        elif bias is not None:
            out.add_(bias)
        ctx.save_for_backward(rows, cols, values, weight, reference)
        ctx.inputs, ctx.uniform = inputs, uniform
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, cols, values, weight, reference = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        # with a reference: the gradient summed over time, (batch, out), serves both its share and the bias
        over_time = grad.reshape(-1, reference.shape[0], grad.shape[1]).sum(0) if reference is not None else None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight
        if ctx.needs_input_grad[1]:
            order = torch.argsort(cols, stable=True)
            by_input = _bag(rows[order], grad.contiguous(), _offsets(cols[order], ctx.inputs),
                            values if ctx.uniform else values[order], ctx.uniform)
            if reference is not None:
                by_input.addmm_(reference.t(), over_time)
            grad_w = by_input.t().contiguous()
        if ctx.needs_input_grad[2]:
            grad_b = (over_time if over_time is not None else grad).sum(0)
        return grad_x, grad_w, grad_b, None, None


def majority_reference(x: Tensor) -> Tensor | None:
    """For x (time, batch, in): each input's largest value where it is nonzero at more than half of the steps,
    else 0, as (batch, in); None where no input is (then the changes are x itself). For spikes valued 0 or v
    that is the value the input holds most of the time."""
    with torch.no_grad():
        top = x.amax(0)
        on = x.sum(0).mul_(2) > top * x.shape[0]
        if not bool(on.any()):
            return None
        return top.mul_(on)


def sparse_enough(x: Tensor) -> bool:
    """Whether x is at most DENSE_ABOVE nonzero, estimated from every 16th element (1/16 of the cost)."""
    sample = x.reshape(-1)[::16]
    return int(torch.count_nonzero(sample)) <= DENSE_ABOVE * sample.numel()


def uses_gather(x: Tensor, out_features: int) -> bool:
    """Whether `spike_linear` gathers for this input (CPU, wide layer, sparse enough in x or in its changes)."""
    if x.device.type != "cpu" or out_features < MIN_WIDTH or x.numel() == 0:
        return False
    reference = majority_reference(x) if x.dim() == 3 else None
    return sparse_enough(x if reference is None else x - reference)


def spike_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear(x, weight, bias), gathering over the nonzeros of x, or of its changes over time when x is
    (time, batch, in), where that is faster."""
    if x.device.type != "cpu" or weight.shape[0] < MIN_WIDTH or x.numel() == 0:
        return F.linear(x, weight, bias)
    reference = majority_reference(x) if x.dim() == 3 else None
    changes = x.detach() if reference is None else x.detach() - reference
    if not sparse_enough(changes):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1])
    out = _SpikeLinear.apply(flat, weight, bias, changes.reshape(flat.shape), reference)
    return out.reshape(*x.shape[:-1], weight.shape[0])
