"""snnrun's neurons against the peers they claim to match: snnTorch, SpikingJelly and Brian2 (each skipped when
not installed)."""

import numpy as np
import pytest
import torch

from snnrun import neurons
from snnrun.neurons import (
    LapicqueParameters,
    LeakyParameters,
    LeakyState,
    LIFParameters,
    LIFState,
    SynapticParameters,
    SynapticState,
    lapicque_step,
    leaky_step,
    lif_step,
    synaptic_step,
)

RESETS = ["subtract", "zero", "none"]


def inputs(steps=150, neurons=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a mix of sub- and supra-threshold drive, with occasional large kicks
    return torch.rand((steps, neurons), generator=g) * 0.5 + (torch.rand((steps, neurons), generator=g) < 0.05) * 1.5


def ours(step, params, state, currents):
    """Our step function over the currents, through `neurons.run`'s reference path."""
    model = {leaky_step: "leaky", lapicque_step: "lapicque", synaptic_step: "synaptic", lif_step: "lif"}[step]
    trace = neurons.run(model, currents, params, state, path="step")
    return trace.spikes, trace.membranes


def theirs(neuron, currents, n_states):
    spikes, mems = [], []
    states = [torch.zeros(currents.shape[1]) for _ in range(n_states)]
    with torch.no_grad():
        for current in currents:
            s, *states = neuron(current, *states)
            spikes.append(s)
            mems.append(states[-1])
    return torch.stack(spikes), torch.stack(mems)


@pytest.mark.parametrize("reset", RESETS)
def test_leaky_matches_snntorch(reset):
    snn = pytest.importorskip("snntorch")
    x = inputs()
    zeros = torch.zeros(x.shape[1])
    s1, m1 = ours(leaky_step, LeakyParameters(0.8, 1.0, reset), LeakyState(zeros), x)
    s2, m2 = theirs(snn.Leaky(beta=0.8, threshold=1.0, reset_mechanism=reset), x, 1)
    assert s1.sum() > 20  # the comparison covers real spikes and resets
    assert torch.equal(s1, s2)
    assert torch.allclose(m1, m2, atol=1e-5)


@pytest.mark.parametrize("reset", RESETS)
def test_lapicque_matches_snntorch(reset):
    snn = pytest.importorskip("snntorch")
    x = inputs(seed=1)
    zeros = torch.zeros(x.shape[1])
    s1, m1 = ours(lapicque_step, LapicqueParameters(5.0, 1e-3, 1e-3, 1.0, reset), LeakyState(zeros), x)
    s2, m2 = theirs(snn.Lapicque(R=5.0, C=1e-3, time_step=1e-3, threshold=1.0, reset_mechanism=reset), x, 1)
    assert s1.sum() > 20
    assert torch.equal(s1, s2)
    assert torch.allclose(m1, m2, atol=1e-5)


@pytest.mark.parametrize("reset", RESETS)
def test_synaptic_matches_snntorch(reset):
    snn = pytest.importorskip("snntorch")
    x = inputs(seed=2) * 0.3
    zeros = torch.zeros(x.shape[1])
    s1, m1 = ours(synaptic_step, SynapticParameters(0.8, 1.0, reset, alpha=0.9), SynapticState(zeros, zeros), x)
    s2, m2 = theirs(snn.Synaptic(alpha=0.9, beta=0.8, threshold=1.0, reset_mechanism=reset), x, 2)
    assert s1.sum() > 20
    assert torch.equal(s1, s2)
    assert torch.allclose(m1, m2, atol=1e-5)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_network_layer_matches_spikingjelly_multistep_lif(reset):
    """SpikingJelly's LIFNode (decay_input=False, detached reset) is snnrun's leaky neuron with reset_delay false:
    beta = 1 - 1/tau, v_reset None = subtract, 0 = zero. Same spikes, membranes and gradients."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import neuron, surrogate

    from snnrun.network import LIFLayer
    from snnrun.schema import TrainedLeaky
    from snnrun.surrogate import Surrogate

    tau = 5.0
    x = (inputs(steps=60, neurons=30, seed=4) * 0.8).unsqueeze(1).repeat(1, 2, 1).requires_grad_()
    weights = torch.randn(2, *x.shape, generator=torch.Generator().manual_seed(5))
    sj = neuron.LIFNode(tau=tau, decay_input=False, v_reset=None if reset == "subtract" else 0.0,
                        surrogate_function=surrogate.ATan(alpha=2.0), detach_reset=True, step_mode="m",
                        store_v_seq=True)
    s2 = sj(x)
    m2 = sj.v_seq
    (g2,) = torch.autograd.grad((s2 * weights[0]).sum() + (m2 * weights[1]).sum(), x)
    layer = LIFLayer(30, TrainedLeaky(beta=1 - 1 / tau, reset=reset, reset_delay=False), Surrogate("atan", 2.0))
    s1, m1 = layer(x)
    (g1,) = torch.autograd.grad((s1 * weights[0]).sum() + (m1 * weights[1]).sum(), x)
    assert s1.sum() > 50
    assert torch.equal(s1, s2)
    torch.testing.assert_close(m1, m2, atol=1e-5, rtol=0)
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)


def brian2_lif(amplitudes_na, steps, dt_ms, method, refractory_ms, onset, offset):
    b2 = pytest.importorskip("brian2")
    from brian2 import Network, NeuronGroup, SpikeMonitor, StateMonitor, TimedArray, ms, mV, nA, ohm

    b2.prefs.codegen.target = "numpy"  # no compiler needed, same arithmetic
    b2.defaultclock.dt = dt_ms * ms
    on = np.zeros(steps)
    on[onset:offset] = 1.0
    envelope = TimedArray(on, dt=dt_ms * ms)
    tau, v_rest, v_reset, v_thresh, R = 10 * ms, -65 * mV, -70 * mV, -50 * mV, 10e6 * ohm
    group = NeuronGroup(len(amplitudes_na), """
        dv/dt = (v_rest - v)/tau + R*I/tau : volt (unless refractory)
        I = i_amp * envelope(t) : amp
        i_amp : amp
        """, threshold="v > v_thresh", reset="v = v_reset", refractory=refractory_ms * ms, method=method,
        namespace={"tau": tau, "v_rest": v_rest, "v_reset": v_reset, "v_thresh": v_thresh, "R": R,
                   "envelope": envelope})
    group.v = v_rest
    group.i_amp = np.asarray(amplitudes_na) * nA
    states = StateMonitor(group, "v", record=True, when="end")
    spikes = SpikeMonitor(group)
    Network(group, states, spikes).run(steps * dt_ms * ms)
    steps_of = np.round(np.asarray(spikes.t / ms) / dt_ms).astype(int)
    return np.asarray(states.v / mV).T, steps_of, np.asarray(spikes.i)


@pytest.mark.parametrize("method,refractory_ms", [("exact", 2.0), ("exact", 0.0), ("euler", 2.0)])
def test_lif_matches_brian2(method, refractory_ms):
    amplitudes = np.linspace(0.5, 4.0, 8)  # nA: from silent to fast firing
    steps, dt, onset, offset = 1500, 0.1, 100, 1200
    v_b2, spike_steps_b2, spike_neurons_b2 = brian2_lif(amplitudes, steps, dt, method, refractory_ms, onset, offset)

    p = LIFParameters(10.0, -65.0, -70.0, -50.0, refractory_ms, 10.0, dt, method)
    n = len(amplitudes)
    state = LIFState(torch.full((n,), -65.0, dtype=torch.float64), torch.zeros(n, dtype=torch.int32))
    amp = torch.as_tensor(amplitudes, dtype=torch.float64)
    on = torch.tensor([float(onset <= t < offset) for t in range(steps)], dtype=torch.float64)
    trace = neurons.run("lif", on[:, None] * amp, p, state, path="step")
    spikes, mems = trace.spikes.numpy(), trace.membranes.numpy()

    assert len(spike_steps_b2) > 30
    for k in range(n):
        ours_k = np.nonzero(spikes[:, k])[0]
        theirs_k = np.sort(spike_steps_b2[spike_neurons_b2 == k])
        assert len(ours_k) == len(theirs_k), f"neuron {k}"
        assert np.all(np.abs(ours_k - theirs_k) <= 1), f"neuron {k}"  # within one dt
    assert np.max(np.abs(mems - v_b2)) < 1e-3  # mV
