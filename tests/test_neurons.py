"""Each neuron model against numbers worked out by hand from its difference equation."""

import math

import pytest
import torch

from snnrun import neurons
from snnrun.neurons import (
    LapicqueParameters,
    LeakyParameters,
    LeakyState,
    LIFConfig,
    LIFState,
    SynapticParameters,
    SynapticState,
    lapicque_step,
    leaky_step,
    lif_step,
    synaptic_step,
)


def run(step, params, state, currents):
    """The step function over the currents (one neuron), through `neurons.run`'s reference path."""
    model = {leaky_step: "leaky", lapicque_step: "lapicque", synaptic_step: "synaptic", lif_step: "lif"}[step]
    column = torch.tensor([[float(i)] for i in currents], dtype=torch.float64)
    trace = neurons.run(model, column, params, state, path="step")
    return [int(s) for s in trace.spikes[:, 0]], trace.membranes[:, 0].tolist()


def leaky(reset, currents, beta=0.5):
    return run(leaky_step, LeakyParameters(beta, 1.0, reset), LeakyState(torch.zeros(1, dtype=torch.float64)),
               currents)


def test_leaky_integrates_and_fires_when_membrane_exceeds_threshold():
    # U1 = 0.6; U2 = 0.5*0.6 + 0.6 = 0.9; U3 = 0.45 + 0.6 = 1.05 > 1 -> spike
    spikes, mem = leaky("subtract", [0.6, 0.6, 0.6])
    assert spikes == [0, 0, 1]
    assert mem == pytest.approx([0.6, 0.9, 1.05])


def test_leaky_resets_by_subtraction_after_spike():
    # U4 = 0.5*1.05 + 0.6 - 1 = 0.125: the spike of step 3 is subtracted in step 4 (snnTorch's delayed reset)
    spikes, mem = leaky("subtract", [0.6, 0.6, 0.6, 0.6])
    assert spikes == [0, 0, 1, 0]
    assert mem[3] == pytest.approx(0.125)


def test_leaky_resets_to_zero_after_spike():
    # U4 = 0.5*(1 - 1)*1.05 + 0.6 = 0.6
    spikes, mem = leaky("zero", [0.6, 0.6, 0.6, 0.6])
    assert spikes == [0, 0, 1, 0]
    assert mem[3] == pytest.approx(0.6)


def test_leaky_without_reset_keeps_integrating():
    # U4 = 0.525 + 0.6 = 1.125, U5 = 0.5625 + 0.6 = 1.1625: fires every step once above threshold
    spikes, mem = leaky("none", [0.6] * 5)
    assert spikes == [0, 0, 1, 1, 1]
    assert mem[3:] == pytest.approx([1.125, 1.1625])


def test_leaky_does_not_fire_at_exactly_threshold():
    spikes, _ = leaky("subtract", [1.0], beta=0.5)
    assert spikes == [0]


def test_leaky_decays_without_input():
    start = LeakyState(torch.tensor([0.5], dtype=torch.float64))
    _, mem = run(leaky_step, LeakyParameters(0.8, 1.0, "subtract"), start, [0, 0])
    assert mem == pytest.approx([0.4, 0.32])


def lapicque(reset, currents):
    # R = 5, C = 1e-3, dt = 1e-3: U[t] = I*R*dt/(RC) + (1 - dt/(RC))*U = I + 0.8*U
    p = LapicqueParameters(5.0, 1e-3, 1e-3, 1.0, reset)
    return run(lapicque_step, p, LeakyState(torch.zeros(1, dtype=torch.float64)), currents)


def test_lapicque_is_forward_euler_of_the_rc_circuit():
    spikes, mem = lapicque("subtract", [0.5, 0.5, 0.5])
    assert mem == pytest.approx([0.5, 0.9, 1.22])
    assert spikes == [0, 0, 1]


def test_lapicque_resets_by_subtraction_after_spike():
    # U4 = 0.5 + 0.8*1.22 - 1 = 0.476
    _, mem = lapicque("subtract", [0.5] * 4)
    assert mem[3] == pytest.approx(0.476)


def test_lapicque_resets_to_zero_after_spike():
    # snnTorch's Lapicque zeroes the freshly integrated value: U4 = (0.5 + 0.976) * (1 - 1) = 0
    _, mem = lapicque("zero", [0.5] * 4)
    assert mem[3] == pytest.approx(0.0)


def synaptic(reset, currents):
    p = SynapticParameters(0.5, 1.0, reset, alpha=0.5)
    zeros = torch.zeros(1, dtype=torch.float64)
    return run(synaptic_step, p, SynapticState(zeros, zeros.clone()), currents)


def test_synaptic_current_decays_and_charges_membrane():
    # syn = 1.2, 0.6, 0.3; U1 = 1.2 (spike); U2 = 0.6 + 0.6 - 1 = 0.2; U3 = 0.1 + 0.3 = 0.4
    spikes, mem = synaptic("subtract", [1.2, 0, 0])
    assert spikes == [1, 0, 0]
    assert mem == pytest.approx([1.2, 0.2, 0.4])


def test_synaptic_resets_membrane_to_zero_but_keeps_synaptic_current():
    # U2 = (0.6 + 0.6)*(1 - 1) = 0; U3 = 0 + 0.3 = 0.3
    spikes, mem = synaptic("zero", [1.2, 0, 0])
    assert mem == pytest.approx([1.2, 0.0, 0.3])


def test_synaptic_without_reset():
    _, mem = synaptic("none", [1.2, 0, 0])
    assert mem == pytest.approx([1.2, 1.2, 0.9])


def lif(currents, v0=0.0, **kw):
    p = LIFConfig(**{"tau_ms": 1.0, "v_rest_mv": 0.0, "v_reset_mv": 0.0, "v_thresh_mv": 0.5,
                     "refractory_ms": 0.0, "r_mohm": 1.0, "dt_ms": 1.0, **kw}).parameters()
    state = LIFState(torch.full((1,), v0, dtype=torch.float64), torch.zeros(1, dtype=torch.int32))
    return run(lif_step, p, state, currents)


def test_lif_exact_integration_relaxes_towards_rest_plus_ri():
    # v1 = v_inf + (v0 - v_inf) e^(-dt/tau) with v_inf = R*I = 0.4 (below threshold)
    _, mem = lif([0.4, 0.4], v_thresh_mv=10.0)
    e = math.exp(-1.0)
    assert mem == pytest.approx([0.4 * (1 - e), 0.4 + (0.4 * (1 - e) - 0.4) * e])


def test_lif_euler_integration():
    # tau = 2: v1 = 0 + 0.5*(1 - 0) = 0.5 (not above 0.5); v2 = 0.5 + 0.5*(1 - 0.5) = 0.75 > 0.5 -> spike, reset
    spikes, mem = lif([1.0, 1.0], tau_ms=2.0, method="euler")
    assert spikes == [0, 1]
    assert mem == pytest.approx([0.5, 0.0])


def test_lif_resets_to_v_reset_and_fires_every_step_without_refractory_period():
    # v1 = 1 - e^-1 = 0.632 > 0.5 -> spike, v = -0.2; v2 = 1 + (-0.2 - 1) e^-1 = 0.559 > 0.5 -> spike again
    spikes, mem = lif([1.0] * 3, v_reset_mv=-0.2)
    assert spikes == [1, 1, 1]
    assert mem == pytest.approx([-0.2, -0.2, -0.2])


def test_lif_holds_membrane_during_refractory_period():
    # refractory 2 ms = 2 steps: after the spike at step 0, step 1 is held at v_reset, step 2 integrates again
    spikes, mem = lif([1.0] * 6, refractory_ms=2.0)
    assert spikes == [1, 0, 1, 0, 1, 0]
    assert mem[1] == 0.0


def test_lif_refractory_period_of_three_steps():
    spikes, _ = lif([1.0] * 7, refractory_ms=3.0)
    assert spikes == [1, 0, 0, 1, 0, 0, 1]


def test_lif_refractory_steps_round_like_brian2():
    assert LIFConfig(refractory_ms=0.3, dt_ms=0.1).parameters().refractory_steps == 3  # 0.3/0.1 = 2.9999...
    assert LIFConfig(refractory_ms=0.25, dt_ms=0.1).parameters().refractory_steps == 2
    assert LIFConfig(refractory_ms=0.0, dt_ms=0.1).parameters().refractory_steps == 0


def test_lif_first_spike_of_a_step_current_matches_the_closed_form():
    # v(t) = -45 - 20 e^(-t/10): crosses -50 when e^(-t/10) < 1/4, i.e. t > 13.86 ms -> the 14th update (index 13)
    spikes, _ = lif([2.0] * 20, v0=-65.0, tau_ms=10.0, v_rest_mv=-65.0, v_reset_mv=-65.0, v_thresh_mv=-50.0,
                    r_mohm=10.0, dt_ms=1.0)
    assert spikes.index(1) == 13


@pytest.mark.parametrize("method", ["exact", "euler"])
@pytest.mark.parametrize("refractory_ms", [0.0, 0.1, 2.0])
def test_lif_scan_equals_the_step_function(method, refractory_ms):
    """The simulation's in-place fast path makes the same spikes and membranes as lif_step, step by step."""


    g = torch.Generator().manual_seed(0)
    currents = torch.rand(400, 50, generator=g, dtype=torch.float64) * 8
    p = LIFConfig(tau_ms=10.0, v_reset_mv=-70.0, refractory_ms=refractory_ms, method=method).parameters()
    state = LIFState(torch.full((50,), -65.0, dtype=torch.float64), torch.zeros(50, dtype=torch.int32))
    assert neurons.path_for("lif", p, state, neurons.heaviside, recording=True) == "scan"
    ref = neurons.run("lif", currents, p, state, path="step")
    fast_spikes = torch.zeros(400, 50, dtype=torch.bool)
    fast_membranes = torch.empty(400, 20, dtype=torch.float64)
    end = neurons.run("lif", currents, p, state, path="scan", spikes_out=fast_spikes, membrane_out=fast_membranes)
    assert ref.spikes.sum() > 200  # with resets and refractory periods to cover
    assert torch.equal(fast_spikes, ref.spikes > 0)
    torch.testing.assert_close(fast_membranes, ref.membranes[:, :20], rtol=0, atol=1e-12)
    torch.testing.assert_close(end.state.membrane, ref.state.membrane, rtol=0, atol=1e-12)
    assert torch.equal(end.state.refractory_left, ref.state.refractory_left)
