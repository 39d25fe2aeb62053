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

where W r, the same for all steps, is gathered once over the nonzeros of r (as is its share of dW; that
took 18.5 against 19.4 ms with a (batch x in) matrix multiply each way). For rate-coded MNIST the changes
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
        return out if len(values) == 0 or values[0] == 1 else out.mul_(values[0])
    return F.embedding_bag(indices, table, offsets, mode="sum", per_sample_weights=values)


def _nonzeros(x: Tensor) -> tuple[Tensor, Tensor, Tensor, bool]:
    """(rows, cols, values, uniform) of the nonzero entries of a 2-D x, in row order; uniform: all one value."""
    flat = torch.nonzero(x.reshape(-1)).squeeze(1)
    values = x.reshape(-1).index_select(0, flat)
    rows = torch.div(flat, x.shape[1], rounding_mode="floor")
    uniform = bool((values == values[0]).all()) if len(values) else True
    return rows, flat - rows * x.shape[1], values, uniform


def _bag_by_column(rows: Tensor, cols: Tensor, values: Tensor, uniform: bool, table: Tensor, columns: int) -> Tensor:
    """The transposed gather: sum of values[k] * table[rows[k]] per column cols[k] (weight gradients)."""
    order = torch.argsort(cols, stable=True)
    return _bag(rows[order], table, _offsets(cols[order], columns), values if uniform else values[order], uniform)


class _SpikeLinear(torch.autograd.Function):
    """F.linear(x, weight, bias) for x (N, in) computed from changes = x - reference: reference is None or
    (batch, in) with N = steps * batch rows in time-major order."""

    @staticmethod
    def forward(ctx, x, weight, bias, changes, reference):
        table = weight.t().contiguous()
        rows, cols, values, uniform = _nonzeros(changes)
        out = _bag(cols, table, _offsets(rows, changes.shape[0]), values, uniform)
        held, held_uniform = (), True
        if reference is not None:  # the majority values' share, the same at every step: gathered once
            *held, held_uniform = _nonzeros(reference)
            base = _bag(held[1], table, _offsets(held[0], reference.shape[0]), held[2], held_uniform)
            if bias is not None:
                base.add_(bias)
            out.view(-1, *base.shape).add_(base)
        elif bias is not None:
            out.add_(bias)
        ctx.save_for_backward(rows, cols, values, weight, *held)
        ctx.inputs, ctx.uniform, ctx.held_uniform = changes.shape[1], uniform, held_uniform
        ctx.batch = None if reference is None else reference.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, cols, values, weight, *held = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        # with a reference: the gradient summed over time, (batch, out), serves both its share and the bias
        over_time = grad.reshape(-1, ctx.batch, grad.shape[1]).sum(0) if held else None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ weight
        if ctx.needs_input_grad[1]:
            by_input = _bag_by_column(rows, cols, values, ctx.uniform, grad.contiguous(), ctx.inputs)
            if held:  # dW[:, i] += sum over the images b holding input i on of r[b, i] * over_time[b]
                by_input += _bag_by_column(*held, ctx.held_uniform, over_time, ctx.inputs)
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
