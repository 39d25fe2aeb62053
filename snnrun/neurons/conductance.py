"""Conductance-based LIF neurons with an adaptive threshold: the excitatory and inhibitory populations of
Diehl & Cook (2015), integrated as their Brian code integrates them (forward Euler at dt, all derivatives from
the state at the start of the step).

    dv/dt     = ((v_rest - v) + ge*(E_exc - v) + gi*(E_inh - v)) / tau     in ms and mV; ge, gi in units of the leak
    dge/dt    = -ge / tau_ge          dgi/dt = -gi / tau_gi
    dtheta/dt = -theta / tau_theta    (excitatory, while learning; tau_theta = 1e7 ms)
    a spike when v > v_thresh + theta - offset, not within refractory_ms of the last one;
    then v = v_reset (and theta += theta_plus while learning).

Where one Euler step would overshoot the membrane's target (dt/tau * (1 + ge + gi) > 1: some 24 inhibitory spikes
at once onto an excitatory neuron) the compiled loop splits the step into equal sub-steps with the conductances
held: the original's forward Euler diverges there (from 2 on), and a 400-neuron network ran to +30,000 mV. Every
other step is the original's.

A refractory neuron cannot fire. `clamp_refractory` also holds its membrane at v_reset (Brian's "unless
refractory"): the inhibitory population's, as in the original code; the excitatory membrane integrates on
from v_reset, because the original's excitatory reset is a string reset, which Brian 1 does not clamp.

The config sections here are the `stdp.excitatory` and `stdp.inhibitory` sections of a Diehl & Cook run; the
per-step update (`euler_membrane`, `conductance_keep`) is compiled into the network loop of `snnrun.stdp_kernel`
(this module does not import numba, so the schema can name these sections without loading it).
"""

from __future__ import annotations

from dataclasses import dataclass

from snnrun.config import ConfigError, field, number


@dataclass(frozen=True)
class ExcitatoryConfig:
    """The excitatory population (the original's `e`): the learning neurons, one adaptive threshold each."""

    v_rest_mv: float = number(-65.0, "resting potential (mV)")
    v_reset_mv: float = number(-65.0, "potential after a spike (mV)")
    v_thresh_mv: float = number(-52.0, "firing threshold (mV), plus theta - offset_mv")
    v_start_mv: float = number(-105.0, "membrane at the start of the run (mV; the original: v_rest - 40)")
    refractory_ms: float = number(5.0, "no spike within this long of the last one (ms)", minimum=0)
    clamp_refractory: bool = field(False, "bool", "hold the membrane at v_reset while refractory (the original "
                                   "does not for this population)")
    tau_ms: float = number(100.0, "membrane time constant (ms)", minimum=0, exclusive_minimum=True)
    e_exc_mv: float = number(0.0, "reversal potential of excitatory synapses (mV)")
    e_inh_mv: float = number(-100.0, "reversal potential of inhibitory synapses (mV)")
    tau_ge_ms: float = number(1.0, "decay of the excitatory conductance (ms)", minimum=0, exclusive_minimum=True)
    tau_gi_ms: float = number(2.0, "decay of the inhibitory conductance (ms)", minimum=0, exclusive_minimum=True)
    theta_start_mv: float = number(20.0, "adaptive threshold theta of every neuron at the start (mV)")
    theta_plus_mv: float = number(0.05, "theta's rise at each spike while learning (mV)", minimum=0)
    tau_theta_ms: float = number(1e7, "theta's decay while learning (ms)", minimum=0, exclusive_minimum=True)
    offset_mv: float = number(20.0, "subtracted from v_thresh_mv + theta (mV)")

    def validate(self, path, source):
        if self.v_reset_mv >= self.v_thresh_mv + self.theta_start_mv - self.offset_mv:
            raise ConfigError(f"{self.v_reset_mv} is not allowed; expected v_reset_mv below the starting threshold "
                              f"v_thresh_mv + theta_start_mv - offset_mv "
                              f"({self.v_thresh_mv + self.theta_start_mv - self.offset_mv})", source=source,
                              key=f"{path}.v_reset_mv", related=(f"{path}.v_thresh_mv",))


@dataclass(frozen=True)
class InhibitoryConfig:
    """The inhibitory population (the original's `i`): one partner per excitatory neuron."""

    v_rest_mv: float = number(-60.0, "resting potential (mV)")
    v_reset_mv: float = number(-45.0, "potential after a spike (mV)")
    v_thresh_mv: float = number(-40.0, "firing threshold (mV)")
    v_start_mv: float = number(-100.0, "membrane at the start of the run (mV; the original: v_rest - 40)")
    refractory_ms: float = number(2.0, "no spike within this long of the last one (ms)", minimum=0)
    clamp_refractory: bool = field(True, "bool", "hold the membrane at v_reset while refractory")
    tau_ms: float = number(10.0, "membrane time constant (ms)", minimum=0, exclusive_minimum=True)
    e_exc_mv: float = number(0.0, "reversal potential of excitatory synapses (mV)")
    e_inh_mv: float = number(-85.0, "reversal potential of inhibitory synapses (mV)")
    tau_ge_ms: float = number(1.0, "decay of the excitatory conductance (ms)", minimum=0, exclusive_minimum=True)
    tau_gi_ms: float = number(2.0, "decay of the inhibitory conductance (ms)", minimum=0, exclusive_minimum=True)

    def validate(self, path, source):
        if self.v_reset_mv >= self.v_thresh_mv:
            raise ConfigError(f"{self.v_reset_mv} is not allowed; expected v_reset_mv below v_thresh_mv "
                              f"({self.v_thresh_mv})", source=source, key=f"{path}.v_reset_mv",
                              related=(f"{path}.v_thresh_mv",))


def refractory_steps(refractory_ms: float, dt_ms: float) -> int:
    """Steps after a spike in which the neuron is refractory, as Brian counts them: it may fire again at step n
    after a spike at step s once (n - s) * dt >= refractory (rounded to whole steps)."""
    return int(round(refractory_ms / dt_ms))


def conductance_keep(tau_ms: float, dt_ms: float) -> float:
    """A conductance's forward-Euler factor per step: g + dt*(-g/tau) = g*(1 - dt/tau)."""
    return 1.0 - dt_ms / tau_ms


def euler_membrane(v, ge, gi, v_rest, e_exc, e_inh, dt_over_tau):
    """One forward-Euler step of the membrane: v + dt/tau * ((v_rest - v) + ge*(E_exc - v) + gi*(E_inh - v))."""
    return v + dt_over_tau * ((v_rest - v) + ge * (e_exc - v) + gi * (e_inh - v))
