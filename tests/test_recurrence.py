"""The whole-sequence recurrence (forward outside autograd, hand-written backward) against autograd through the
step functions: same spikes, same membranes, same gradients for the current and beta, for every model, reset,
surrogate and kind of beta."""

import pytest
import torch

from snnrun import neurons
from snnrun.surrogate import KINDS, Surrogate


def parameters(model, beta, alpha, threshold, reset, delay):
    if model == "synaptic":
        return neurons.SynapticParameters(beta, threshold, reset, delay, alpha=alpha)
    return neurons.LeakyParameters(beta, threshold, reset, delay)


def by_steps(current, model, beta, alpha, threshold, reset, spike_fn, delay=True):
    trace = neurons.run(model, current, parameters(model, beta, alpha, threshold, reset, delay), spike_fn=spike_fn,
                        path="step")
    return trace.spikes, trace.membranes


def run_sequence(current, model, beta, alpha, threshold, reset, kind, slope, reset_delay=True):
    trace = neurons.run(model, current, parameters(model, beta, alpha, threshold, reset, reset_delay),
                        spike_fn=Surrogate(kind, slope), path="sequence")
    return trace.spikes, trace.membranes


def test_run_takes_the_sequence_path_for_training_and_the_step_path_for_a_learned_threshold():
    current = torch.rand(5, 2, 3)
    surrogate = Surrogate("atan", 2.0)
    fixed = neurons.LeakyParameters(torch.tensor(0.9), torch.tensor(1.0))
    learned = neurons.LeakyParameters(torch.tensor(0.9), torch.ones(3, requires_grad=True))
    assert neurons.path_for("leaky", fixed, None, surrogate, recording=False) == "sequence"
    assert neurons.path_for("leaky", learned, None, surrogate, recording=False) == "step"
    assert neurons.path_for("leaky", fixed, neurons.LeakyState(current[0]), surrogate, recording=False) == "step"
    lif = neurons.LIFConfig().parameters()
    assert neurons.path_for("lif", lif, None, neurons.heaviside, recording=True) == "scan"
    per_neuron = neurons.LIFConfig(tau_ms=[5.0, 10.0, 20.0]).parameters(None, torch.float32)
    assert neurons.path_for("lif", per_neuron, None, neurons.heaviside, recording=True) == "step"
    with pytest.raises(ValueError, match="expected one of step, sequence, scan"):
        neurons.run("leaky", current, fixed, spike_fn=surrogate, path="scna")


def gradients(fn, current, beta, weights):
    current = current.clone().requires_grad_()
    beta = beta.clone().requires_grad_(beta.dim() > 0)
    spikes, membranes = fn(current, beta)
    loss = (spikes * weights[0]).sum() + (membranes * weights[1]).sum()
    inputs = [current, beta] if beta.requires_grad else [current]
    grads = torch.autograd.grad(loss, inputs)
    return spikes.detach(), membranes.detach(), grads


@pytest.mark.parametrize("model", ["leaky", "synaptic"])
@pytest.mark.parametrize("reset", neurons.RESETS)
@pytest.mark.parametrize("per_neuron", [False, True])
@pytest.mark.parametrize("delay", [True, False])
def test_matches_autograd_through_the_steps(model, reset, per_neuron, delay):
    g = torch.Generator().manual_seed(sum(map(ord, f"{model}{reset}{per_neuron}{delay}")))
    steps, batch, size = 12, 3, 7
    current = torch.rand(steps, batch, size, generator=g, dtype=torch.float64) * 0.9
    beta = (torch.rand(size, generator=g, dtype=torch.float64) * 0.5 + 0.45) if per_neuron \
        else torch.tensor(0.85, dtype=torch.float64)
    weights = torch.randn(2, steps, batch, size, generator=g, dtype=torch.float64)
    for kind in KINDS:
        def steps_fn(c, b, kind=kind):
            return by_steps(c, model, b, 0.7, 1.0, reset, Surrogate(kind, 4.0), delay)

        def sequence_fn(c, b, kind=kind):
            return run_sequence(c, model, b, 0.7, 1.0, reset, kind, 4.0, reset_delay=delay)

        ref = gradients(steps_fn, current, beta, weights)
        new = gradients(sequence_fn, current, beta, weights)
        assert ref[0].sum() > 0, "the test current should make spikes"
        torch.testing.assert_close(new[0], ref[0], rtol=0, atol=0)
        torch.testing.assert_close(new[1], ref[1], rtol=1e-12, atol=1e-12)
        for ours, theirs in zip(new[2], ref[2], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-10)


def test_only_spikes_or_only_membranes_used():
    current = torch.rand(10, 2, 5, dtype=torch.float64, requires_grad=True)
    beta = torch.tensor(0.9, dtype=torch.float64)
    spikes, _ = run_sequence(current, "leaky", beta, 0.0, 0.5, "subtract", "atan", 2.0)
    (g_spikes,) = torch.autograd.grad(spikes.sum(), current)
    ref_spikes, _ = by_steps(current, "leaky", beta, 0.0, 0.5, "subtract", Surrogate("atan", 2.0))
    torch.testing.assert_close(g_spikes, torch.autograd.grad(ref_spikes.sum(), current)[0])
    _, membranes = run_sequence(current, "leaky", beta, 0.0, 0.5, "subtract", "atan", 2.0)
    (g_mem,) = torch.autograd.grad(membranes.sum(), current)
    _, ref_mem = by_steps(current, "leaky", beta, 0.0, 0.5, "subtract", Surrogate("atan", 2.0))
    torch.testing.assert_close(g_mem, torch.autograd.grad(ref_mem.sum(), current)[0])


def test_straight_through_leaves_the_incoming_gradient_alone():
    current = torch.rand(6, 4, dtype=torch.float64, requires_grad=True)
    spikes, _ = run_sequence(current, "leaky", torch.tensor(0.5, dtype=torch.float64), 0.0, 0.3, "zero",
                             "straight_through", 1.0)
    upstream = torch.ones_like(spikes)
    spikes.backward(upstream)
    assert torch.equal(upstream, torch.ones_like(spikes))
