"""Leaky integrate-and-fire neuron models as pure step functions.

Each model is a frozen dataclass of parameters, a NamedTuple of state and a step
function `step(current, state, params, spike_fn) -> (spikes, new_state)`. State is
passed in and returned, never stored, so `simulate` and `train` share these
functions and a network's `state_dict` holds parameters only.

The discrete models follow snnTorch exactly (its default delayed reset: the spike
emitted at step t-1 resets the membrane during the update of step t); `lif`
follows Brian2's exact integration in physical units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch

Tensor = torch.Tensor
Scalar = float | Tensor
SpikeFn = Callable[[Tensor], Tensor]

RESETS = ("subtract", "zero", "none")


def heaviside(x: Tensor) -> Tensor:
    """S = 1 where x > 0, else 0, in x's dtype (the forward pass of every surrogate)."""
    return (x > 0).to(x.dtype)


# --------------------------------------------------------------------------- leaky


class LeakyState(NamedTuple):
    membrane: Tensor


@dataclass(frozen=True)
class LeakyParameters:
    """First-order leaky integrator (snnTorch `Leaky`)."""

    beta: Scalar = 0.8
    threshold: Scalar = 1.0
    reset: str = "subtract"
    reset_delay: bool = True  # False: reset in the step that fires (Norse, SpikingJelly), no gradient through it


def _reset_now(v: Tensor, spikes: Tensor, threshold: Scalar, reset: str) -> Tensor:
    """The membrane after an immediate reset by the spikes just emitted (the reset carries no gradient)."""
    fired = spikes.detach()
    if reset == "subtract":
        return v - fired * threshold
    if reset == "zero":
        return v * (1 - fired)
    return v


def leaky_step(current: Tensor, state: LeakyState, p: LeakyParameters,
               spike_fn: SpikeFn = heaviside) -> tuple[Tensor, LeakyState]:
    """U[t] = beta*U[t-1] + I[t] - S[t-1]*threshold  (subtract)
       U[t] = beta*(1 - S[t-1])*U[t-1] + I[t]        (zero)
       U[t] = beta*U[t-1] + I[t]                     (none)
       S[t] = H(U[t] - threshold),  S[t-1] = H(U[t-1] - threshold) carries no gradient.
    With reset_delay False: S[t] = H(beta*U[t-1] + I[t] - threshold), then U[t] is reset by S[t] at once.
    """
    u = state.membrane
    if not p.reset_delay:
        v = p.beta * u + current
        spikes = spike_fn(v - p.threshold)
        return spikes, LeakyState(_reset_now(v, spikes, p.threshold, p.reset))
    if p.reset == "subtract":
        u = p.beta * u + current - heaviside(u - p.threshold) * p.threshold
    elif p.reset == "zero":
        u = p.beta * (u * (1 - heaviside(u - p.threshold))) + current
    else:
        u = p.beta * u + current
    return spike_fn(u - p.threshold), LeakyState(u)


# --------------------------------------------------------------------------- lapicque


@dataclass(frozen=True)
class LapicqueParameters:
    """Lapicque's RC circuit, forward Euler with step `time_step` (snnTorch `Lapicque`)."""

    R: Scalar = 5.0
    C: Scalar = 1e-3
    time_step: Scalar = 1e-3
    threshold: Scalar = 1.0
    reset: str = "subtract"


def lapicque_step(current: Tensor, state: LeakyState, p: LapicqueParameters,
                  spike_fn: SpikeFn = heaviside) -> tuple[Tensor, LeakyState]:
    """V[t] = I[t]*R*dt/(R*C) + (1 - dt/(R*C))*U[t-1]
       U[t] = V[t] - S[t-1]*threshold (subtract) | V[t]*(1 - S[t-1]) (zero) | V[t] (none)
    """
    u = state.membrane
    tau = p.R * p.C
    v = current * p.R * (1 / tau) * p.time_step + (1 - p.time_step / tau) * u
    if p.reset == "subtract":
        v = v - heaviside(u - p.threshold) * p.threshold
    elif p.reset == "zero":
        v = v - heaviside(u - p.threshold) * v
    return spike_fn(v - p.threshold), LeakyState(v)


def lapicque_capacitance(beta: float, R: Scalar, time_step: float) -> Scalar:
    """C for a decay `beta`, as snnTorch derives it: C = time_step / (R * ln(1/beta))."""
    return time_step / (R * math.log(1 / beta))


# --------------------------------------------------------------------------- synaptic


class SynapticState(NamedTuple):
    synaptic_current: Tensor
    membrane: Tensor


@dataclass(frozen=True)
class SynapticParameters:
    """Current-based second-order model (snnTorch `Synaptic`)."""

    alpha: Scalar = 0.9
    beta: Scalar = 0.8
    threshold: Scalar = 1.0
    reset: str = "subtract"
    reset_delay: bool = True  # False: reset in the step that fires, as in leaky_step


def synaptic_step(current: Tensor, state: SynapticState, p: SynapticParameters,
                  spike_fn: SpikeFn = heaviside) -> tuple[Tensor, SynapticState]:
    """I_syn[t] = alpha*I_syn[t-1] + I[t]
       V[t] = beta*U[t-1] + I_syn[t]
       U[t] = V[t] - S[t-1]*threshold (subtract) | V[t]*(1 - S[t-1]) (zero) | V[t] (none)
    """
    u = state.membrane
    syn = p.alpha * state.synaptic_current + current
    v = p.beta * u + syn
    if not p.reset_delay:
        spikes = spike_fn(v - p.threshold)
        return spikes, SynapticState(syn, _reset_now(v, spikes, p.threshold, p.reset))
    if p.reset == "subtract":
        v = v - heaviside(u - p.threshold) * p.threshold
    elif p.reset == "zero":
        v = v - heaviside(u - p.threshold) * v
    return spike_fn(v - p.threshold), SynapticState(syn, v)


# --------------------------------------------------------------------------- lif (physical units)


class LIFState(NamedTuple):
    membrane: Tensor  # mV
    refractory_left: Tensor  # steps still refractory (int)


@dataclass(frozen=True)
class LIFParameters:
    """dv/dt = (v_rest - v)/tau + R*I/tau (unless refractory), in ms, mV, MOhm and nA."""

    tau_ms: Scalar = 10.0
    v_rest_mv: Scalar = -65.0
    v_reset_mv: Scalar = -65.0
    v_thresh_mv: Scalar = -50.0
    refractory_ms: float = 2.0
    r_mohm: Scalar = 10.0
    dt_ms: float = 0.1
    method: str = "exact"

    @cached_property
    def decay(self) -> Scalar:
        """exp(-dt/tau): the exact solution's factor over one step."""
        if isinstance(self.tau_ms, Tensor):
            return torch.exp(-self.dt_ms / self.tau_ms)
        return math.exp(-self.dt_ms / self.tau_ms)

    @cached_property
    def refractory_steps(self) -> int:
        """Whole steps of refractoriness, rounded as Brian2's `timestep()` does."""
        return int((self.refractory_ms + 1e-3 * self.dt_ms) / self.dt_ms)


def lif_step(current: Tensor, state: LIFState, p: LIFParameters,
             spike_fn: SpikeFn = heaviside) -> tuple[Tensor, LIFState]:
    """One step in Brian2's order: integrate unless refractory, threshold, reset.

    exact: v[t] = v_inf + (v[t-1] - v_inf)*exp(-dt/tau),  v_inf = v_rest + R*I[t]
    euler: v[t] = v[t-1] + dt/tau*(v_rest - v[t-1] + R*I[t])
    A neuron that spikes at step s is held for the next refractory_steps - 1 steps
    (Brian2's `timestep(t - lastspike) < timestep(refractory)`) and cannot spike then.
    """
    v = state.membrane
    drive = p.v_rest_mv + p.r_mohm * current
    if p.method == "exact":
        v_next = torch.lerp(drive, v, p.decay)  # drive + decay*(v - drive), one fused op
    else:
        v_next = torch.lerp(v, drive, p.dt_ms / p.tau_ms)
    active = state.refractory_left <= 0
    v = torch.where(active, v_next, v)
    if spike_fn is heaviside:  # simulation: no surrogate needed, one comparison
        fired = (v > p.v_thresh_mv) & active
        spikes = fired.to(v.dtype)
    else:
        spikes = spike_fn(v - p.v_thresh_mv) * active
        fired = spikes > 0
    v = torch.where(fired, p.v_reset_mv, v)
    left = torch.where(fired, p.refractory_steps - 1, state.refractory_left - 1).clamp_(min=0)
    return spikes, LIFState(v, left)


def lif_scan(currents: Tensor, state: LIFState, p: LIFParameters, spikes_out: Tensor,
             membrane_out: Tensor | None = None) -> LIFState:
    """Run `lif_step` over currents (steps, neurons or 1) in place: the simulation's fast path.

    Same arithmetic as `lif_step`, with each step written into preallocated tensors: spikes into
    spikes_out[t] (bool), the first membrane_out.shape[1] membranes into membrane_out[t]. Masks are kept as
    float 0/1 tensors and applied with `lerp`, which is exact at weights 0 and 1 (v -> v, v -> v_reset): on the
    CPU, float comparisons and lerps run three to four times faster than bool masks and `masked_fill`. The
    refractory period is a per-neuron float step index `until` (held while t < until), so a fire costs one
    lerp. A refractory neuron sits at v_reset (< v_thresh, checked by the config), so it cannot fire.
    Needs scalar parameters (per-neuron ones take `lif_step`).
    """
    steps = currents.shape[0]
    v = state.membrane.clone()
    scratch = torch.empty_like(v)
    fired = torch.empty_like(v)
    held = torch.empty_like(v)
    v_reset = torch.tensor(p.v_reset_mv, dtype=v.dtype, device=v.device)
    refractory = p.refractory_steps >= 2  # one step of refractoriness is the reset itself
    until = state.refractory_left.to(v.dtype)  # held at local step t while t < until
    stamps = torch.arange(steps, dtype=v.dtype, device=v.device) + p.refractory_steps  # `until` after a fire
    recorded = 0 if membrane_out is None else membrane_out.shape[1]
    drive = p.v_rest_mv + p.r_mohm * currents  # (steps, neurons or 1): one operation for the chunk
    for t in range(steps):
        if p.method == "exact":
            torch.lerp(drive[t], v, p.decay, out=scratch)
        else:
            torch.lerp(v, drive[t], p.dt_ms / p.tau_ms, out=scratch)
        v, scratch = scratch, v
        if refractory:
            torch.gt(until, t, out=held)
            torch.lerp(v, v_reset, held, out=v)
        torch.gt(v, p.v_thresh_mv, out=fired)
        torch.lerp(v, v_reset, fired, out=v)
        spikes_out[t].copy_(fired)
        if refractory:
            torch.lerp(until, stamps[t], fired, out=until)
        if recorded:
            membrane_out[t] = v[:recorded]
    left = (until - steps).clamp_(min=0).to(state.refractory_left.dtype)
    return LIFState(v, left)


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Model:
    """What a simulation needs to know of a neuron model."""

    step: Callable
    initial_state: Callable[[Tensor], tuple]  # from the initial membrane
    threshold: Callable[[object], Scalar]  # the firing threshold, for plots


MODELS: dict[str, Model] = {
    "leaky": Model(leaky_step, lambda u: LeakyState(u), lambda p: p.threshold),
    "lapicque": Model(lapicque_step, lambda u: LeakyState(u), lambda p: p.threshold),
    "synaptic": Model(synaptic_step, lambda u: SynapticState(torch.zeros_like(u), u), lambda p: p.threshold),
    "lif": Model(lif_step, lambda u: LIFState(u, torch.zeros(u.shape, dtype=torch.int32, device=u.device)),
                 lambda p: p.v_thresh_mv),
}
