"""The gathering linear layer equals F.linear, forward and backward, and is used only where it pays."""

import pytest
import torch
import torch.nn.functional as F

from snnrun import sparse
from snnrun.sparse import spike_linear, uses_gather


def spikes(shape, density, generator, scale=1.0):
    return (torch.rand(shape, generator=generator, dtype=torch.float64) < density).double() * scale


@pytest.mark.parametrize("scale", [1.0, 1.25])  # 1.25: spikes after dropout with p = 0.2
@pytest.mark.parametrize("input_grad", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_gather_equals_dense(scale, input_grad, bias):
    g = torch.Generator().manual_seed(1)
    x = spikes((5, 6, 40), 0.1, g, scale).requires_grad_(input_grad)
    weight = torch.randn(70, 40, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(70, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    upstream = torch.randn(5, 6, 70, generator=g, dtype=torch.float64)
    assert uses_gather(x, 70)
    assert_equals_dense(x, weight, b, upstream)


def assert_equals_dense(x, weight, b, upstream):
    """spike_linear equals F.linear, output and every gradient asked for."""
    inputs = [t for t in (x, weight, b) if t is not None and t.requires_grad]
    ours = spike_linear(x, weight, b)
    theirs = F.linear(x, weight, b)
    torch.testing.assert_close(ours, theirs)
    for a, c in zip(torch.autograd.grad(ours, inputs, upstream), torch.autograd.grad(theirs, inputs, upstream),
                    strict=True):
        torch.testing.assert_close(a, c)


def test_rows_and_inputs_without_spikes():
    x = torch.zeros(4, 30, dtype=torch.float64)
    x[1, 3] = 1.0
    weight = torch.randn(80, 30, dtype=torch.float64, requires_grad=True)
    out = spike_linear(x, weight, None)
    torch.testing.assert_close(out, F.linear(x, weight))
    (grad,) = torch.autograd.grad(out.sum(), weight)
    expected = torch.zeros_like(weight)
    expected[:, 3] = 1.0
    torch.testing.assert_close(grad, expected)


def test_dense_where_gathering_does_not_pay():
    g = torch.Generator().manual_seed(2)
    assert not uses_gather(spikes((10, 50), 0.9, g), 100)  # too dense
    assert not uses_gather(spikes((10, 50), 0.05, g), sparse.MIN_WIDTH - 1)  # too narrow
    assert not uses_gather(torch.zeros(0, 50), 100)
    assert uses_gather(spikes((10, 50), 0.05, g), 100)


@pytest.mark.parametrize("scale", [1.0, 1.25])
@pytest.mark.parametrize("input_grad", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_inputs_on_most_steps_are_gathered_where_they_change(scale, input_grad, bias):
    """Rate-coded bright pixels fire at nearly every step: the layer gathers over the steps where an input
    differs from its majority value, and still equals F.linear, forward and backward."""
    g = torch.Generator().manual_seed(3)
    bright = torch.rand(6, 40, generator=g) < 0.3  # these inputs fire with probability 0.95, the rest 0.03
    rate = torch.where(bright, 0.95, 0.03).double()
    x = ((torch.rand(12, 6, 40, generator=g, dtype=torch.float64) < rate).double() * scale).requires_grad_(input_grad)
    reference = sparse.majority_reference(x)
    assert reference is not None and torch.equal(reference != 0, (x != 0).double().mean(0) > 0.5)
    assert (x - reference).count_nonzero() < 0.5 * x.count_nonzero()  # sparser than x itself
    assert uses_gather(x, 70)
    weight = torch.randn(70, 40, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(70, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    upstream = torch.randn(12, 6, 70, generator=g, dtype=torch.float64)
    assert_equals_dense(x, weight, b, upstream)


def test_no_reference_for_sparse_inputs():
    g = torch.Generator().manual_seed(4)
    assert sparse.majority_reference(spikes((10, 4, 50), 0.1, g)) is None


@pytest.mark.parametrize("bias", [False, True])
def test_spikes_the_same_at_every_step(bias):
    """Inputs that never change over time (neurons firing at every step or never): nothing to gather beyond
    the majority share, and the layer still equals F.linear (this once raised IndexError on the empty gather)."""
    g = torch.Generator().manual_seed(5)
    x = spikes((1, 6, 40), 0.5, g).expand(9, -1, -1).contiguous().requires_grad_(True)
    weight = torch.randn(70, 40, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(70, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    assert uses_gather(x, 70)
    assert_equals_dense(x, weight, b, torch.randn(9, 6, 70, generator=g, dtype=torch.float64))
