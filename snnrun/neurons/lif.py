"""The leaky integrate-and-fire neuron in physical units, as Brian2 integrates it: parameters, state, step, scan.

    dv/dt = (v_rest - v)/tau + R*I/tau    (unless refractory), in ms, mV, MOhm and nA
    exact: v[t] = v_inf + (v[t-1] - v_inf)*exp(-dt/tau),  v_inf = v_rest + R*I[t]
    euler: v[t] = v[t-1] + dt/tau*(v_rest - v[t-1] + R*I[t])
    a spike when v > v_thresh; then v = v_reset, held for the refractory period.

Fast paths: `lif_scan`, the same arithmetic in place over a chunk of steps (one value per parameter), and
`lif_sequence`, the training form: a whole (time, batch, neurons) sequence from rest as one autograd node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar, NamedTuple

import torch

from snnrun.config import ConfigError, choice, number
from snnrun.neurons.common import Clock, Scalar, SpikeFn, Tensor, heaviside, model_key, pairs, values


@dataclass(frozen=True)
class LIFConfig:
    """The `neuron` section of a physical-unit LIF neuron."""

    model: str = model_key("lif")
    tau_ms: float | list = number(10.0, "membrane time constant (ms)", minimum=0, exclusive_minimum=True,
                                  per_neuron=True)
    v_rest_mv: float | list = number(-65.0, "resting potential (mV)", per_neuron=True)
    v_reset_mv: float | list = number(-65.0, "potential after a spike (mV)", per_neuron=True)
    v_thresh_mv: float | list = number(-50.0, "firing threshold (mV); a spike when v > v_thresh", per_neuron=True)
    refractory_ms: float = number(2.0, "refractory period (ms)", minimum=0)
    r_mohm: float | list = number(10.0, "membrane resistance (MOhm); R*I is in mV for I in nA", minimum=0,
                                  exclusive_minimum=True, per_neuron=True)
    dt_ms: float = number(0.1, "integration step (ms)", minimum=0, exclusive_minimum=True)
    method: str = choice("exact", ["exact", "euler"], "integration of the membrane equation")

    current_unit: ClassVar[str] = "nA"  # Brian2's units: R*I in mV for I in nA and R in MOhm
    membrane_unit: ClassVar[str] = "mV"
    time_unit: ClassVar[str] = "ms"

    @property
    def rest(self) -> float | list:
        return self.v_rest_mv

    @property
    def firing_threshold(self) -> float | list:
        return self.v_thresh_mv

    @property
    def rheobase(self) -> float:
        """The smallest constant current (nA) that makes the (first) neuron fire: (v_thresh - v_rest) / R."""
        first = lambda x: float(x[0] if isinstance(x, list) else x)  # noqa: E731
        return (first(self.v_thresh_mv) - first(self.v_rest_mv)) / first(self.r_mohm)

    def validate(self, path, source):
        for reset, thresh in pairs(self.v_reset_mv, self.v_thresh_mv):
            if reset >= thresh:
                raise ConfigError(f"{reset} is not allowed; expected v_reset_mv below v_thresh_mv ({thresh})",
                                  source=source, key=f"{path}.v_reset_mv", related=(f"{path}.v_thresh_mv",))

    def parameters(self, device=None, dtype=None) -> LIFParameters:
        v = lambda x: values(x, device, dtype)  # noqa: E731
        return LIFParameters(v(self.tau_ms), v(self.v_rest_mv), v(self.v_reset_mv), v(self.v_thresh_mv),
                             self.refractory_ms, v(self.r_mohm), self.dt_ms, self.method)

    def clock(self) -> Clock:
        return Clock(self.dt_ms, self.time_unit)


class LIFState(NamedTuple):
    membrane: Tensor  # mV
    refractory_left: Tensor  # steps still refractory (int)


@dataclass(frozen=True)
class LIFParameters:
    """The values a step uses (numbers, or per-neuron tensors)."""

    tau_ms: Scalar
    v_rest_mv: Scalar
    v_reset_mv: Scalar
    v_thresh_mv: Scalar
    refractory_ms: float
    r_mohm: Scalar
    dt_ms: float
    method: str = "exact"

    @cached_property
    def decay(self) -> Scalar:
        """exp(-dt/tau): the exact solution's factor over one step."""
        if isinstance(self.tau_ms, Tensor):
            return torch.exp(-self.dt_ms / self.tau_ms)
        return math.exp(-self.dt_ms / self.tau_ms)

    @cached_property
    def carry(self) -> Scalar:
        """The share of the membrane's distance from the drive kept over one step: exp(-dt/tau) exact, 1 - dt/tau
        euler (v[t] = lerp(drive, v[t-1], carry) either way)."""
        return self.decay if self.method == "exact" else 1 - self.dt_ms / self.tau_ms

    @cached_property
    def unit_current(self) -> Scalar:
        """The current (nA) that, held for one step, raises the membrane by the threshold distance
        |v_thresh - v_rest|: distance / (R * (1 - carry)). A trained layer's synapses deliver their output in
        these units, so a weight w from one input spike is Brian2's delta synapse `v_post += w * distance`, the
        same for every dt (157.6 nA for tau 10 ms, dt 1 ms, R 1 MOhm, 15 mV)."""
        return self.threshold_distance / (self.r_mohm * (1 - self.carry))

    @cached_property
    def threshold_distance(self) -> Scalar:
        """|v_thresh - v_rest| in mV (1 where they coincide): the surrogate gradient sees the membrane in these
        units, (v - v_thresh) / distance, so a surrogate slope means the same as for a unitless neuron whose
        threshold is 1 above rest."""
        distance = abs(self.v_thresh_mv - self.v_rest_mv)
        if isinstance(distance, Tensor):
            return torch.where(distance > 0, distance, torch.ones_like(distance))
        return distance if distance > 0 else 1.0

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
    (Brian2's `timestep(t - lastspike) < timestep(refractory)`) and cannot spike then. With a surrogate
    spike_fn (training) the spike's gradient flows through (v - v_thresh) / |v_thresh - v_rest|; the reset and
    the refractory hold (v = v_reset) carry none.
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
    else:  # training: the surrogate's gradient in units of the threshold's distance from rest (d/dv: 1/distance)
        spikes = spike_fn((v - p.v_thresh_mv) / p.threshold_distance) * active
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


class _LIFRecurrence(torch.autograd.Function):
    """`lif_step` over a whole sequence with a surrogate spike, its backward pass written out.

    Forward (no autograd), per step: pre[t] = lerp(drive[t], v[t-1], decay) unless held (then v[t-1] = v_reset),
    S[t] = pre[t] > v_thresh, v[t] = v_reset where S[t] else pre[t]. Backward, with the reset and the hold
    carrying no gradient (as autograd through `lif_step` gives them):

        P[t] = active[t] * dL/dS[t] * surrogate'((pre[t] - v_thresh)/distance) / distance
               + (1 - S[t]) * (dL/dv[t] + decay * P[t+1])          (dL/dpre[t])
        dL/dI[t] = active[t] * (1 - decay) * R * P[t]               (exact; euler: dt/tau for 1 - decay)

    During a hold P only reaches earlier held steps and the firing step, whose (1 - S) is 0, so the factor a
    held step passes back does not matter; one scalar carry serves every step."""

    @staticmethod
    def forward(ctx, current, p, kind, slope):
        ctx.set_materialize_grads(False)
        pre, spk = torch.empty_like(current), torch.empty_like(current)
        held_all = torch.zeros_like(current) if p.refractory_steps >= 2 else None
        with torch.no_grad():
            drive = current * p.r_mohm
            drive.add_(p.v_rest_mv)
            factor = p.carry
            v = torch.full_like(current[0], p.v_rest_mv)
            v_reset = torch.tensor(p.v_reset_mv, dtype=v.dtype, device=v.device)
            until = torch.zeros_like(v)  # held at step t while t < until
            stamps = torch.arange(current.shape[0], dtype=v.dtype, device=v.device) + p.refractory_steps
            for t, (drive_t, pre_t, spk_t) in enumerate(zip(drive.unbind(0), pre.unbind(0), spk.unbind(0),
                                                            strict=True)):
                torch.lerp(drive_t, v, factor, out=pre_t)
                if held_all is not None:
                    torch.gt(until, t, out=held_all[t])
                    pre_t.lerp_(v_reset, held_all[t])
                torch.gt(pre_t, p.v_thresh_mv, out=spk_t)
                v = torch.lerp(pre_t, v_reset, spk_t)
                if held_all is not None:
                    until.lerp_(stamps[t], spk_t)
            mem = torch.lerp(pre, v_reset, spk)
        ctx.save_for_backward(pre, spk, held_all)
        ctx.settings = (p, factor, kind, slope)
        return spk, mem

    @staticmethod
    def backward(ctx, grad_spikes, grad_mem):
        from snnrun.surrogate import DERIVATIVES

        if grad_spikes is None and grad_mem is None:
            return None, None, None, None
        pre, spk, held = ctx.saved_tensors
        p, factor, kind, slope = ctx.settings
        kept = 1 - spk
        active = None if held is None else 1 - held
        distance = float(p.threshold_distance)
        if grad_spikes is not None:
            x = torch.add(pre, -p.v_thresh_mv).div_(distance)
            a = DERIVATIVES[kind](grad_spikes, x, slope) / distance
            if active is not None:
                a.mul_(active)
            if grad_mem is not None:
                a.addcmul_(kept, grad_mem)
        else:
            a = grad_mem * kept
        carry = kept.mul_(factor)  # (1 - S[t]) * decay
        steps_a, carries = a.unbind(0), carry.unbind(0)
        for t in range(a.shape[0] - 2, -1, -1):
            steps_a[t].addcmul_(carries[t], steps_a[t + 1])
        a.mul_((1 - factor) * p.r_mohm)
        if active is not None:
            a.mul_(active)
        return a, None, None, None


def lif_sequence(currents: Tensor, p: LIFParameters, kind: str, slope: float) -> tuple[Tensor, Tensor]:
    """(spikes, membranes) of lif neurons from rest over currents (time, ...) in nA, with the surrogate `kind`
    (`snnrun.surrogate.DERIVATIVES`) at `slope` in units of the threshold distance: `lif_step` with a surrogate
    as one autograd node (one value per parameter; `tests/test_recurrence.py` compares it with the step)."""
    return _LIFRecurrence.apply(currents, p, kind, float(slope))


def initial_state(membrane: Tensor) -> LIFState:
    return LIFState(membrane, torch.zeros(membrane.shape, dtype=torch.int32, device=membrane.device))


def uses_scan(p: LIFParameters) -> bool:
    """`lif_scan` runs parameters with one value each (per-neuron tensors take the step)."""
    return not any(isinstance(getattr(p, k), Tensor) for k in ("tau_ms", "v_rest_mv", "v_reset_mv", "v_thresh_mv",
                                                               "r_mohm"))
