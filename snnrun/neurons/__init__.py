"""The neuron models, each whole in one module, and `run`: the library's only loop over time.

    leaky.py     snnTorch's Leaky        U[t] = beta*U[t-1] + I[t] - S[t-1]*threshold
    synaptic.py  snnTorch's Synaptic     I_syn[t] = alpha*I_syn[t-1] + I[t];  U[t] = beta*U[t-1] + I_syn[t] - ...
    lapicque.py  snnTorch's Lapicque     forward Euler of the RC circuit, tau = R*C
    lif.py       Brian2's LIF            dv/dt = (v_rest - v)/tau + R*I/tau, refractory, in ms, mV, MOhm, nA
    sequence.py  the fast path of leaky and synaptic: a whole sequence as one autograd node
    common.py    what they share: the spike's forward pass, resets, the clock, the shared config keys

Each model module holds its config section (one schema and one set of defaults, which `simulate` and `train`
both use), its parameters and state, its step function (the readable reference, with the equation in its
docstring) and its fast path. State is passed in and returned, never stored, so a network's `state_dict`
holds parameters only. `run` picks the path: the fast one where it applies, else the step function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from snnrun.neurons import lapicque, leaky, lif, synaptic
from snnrun.neurons.common import (
    MODEL_NAMES,
    RESETS,
    Clock,
    Scalar,
    SpikeFn,
    Tensor,
    Trace,
    heaviside,
)
from snnrun.neurons.lapicque import LapicqueConfig, LapicqueParameters, lapicque_capacitance, lapicque_step
from snnrun.neurons.leaky import LeakyConfig, LeakyParameters, LeakyState, leaky_step
from snnrun.neurons.lif import LIFConfig, LIFParameters, LIFState, lif_scan, lif_step
from snnrun.neurons.sequence import run_sequence
from snnrun.neurons.synaptic import SynapticConfig, SynapticParameters, SynapticState, synaptic_step

__all__ = [
    "MODELS", "MODEL_NAMES", "RESETS", "Clock", "LIFConfig", "LIFParameters", "LIFState", "LapicqueConfig",
    "LapicqueParameters", "LeakyConfig", "LeakyParameters", "LeakyState", "Model", "SynapticConfig",
    "SynapticParameters", "SynapticState", "Trace", "heaviside", "lapicque_capacitance", "lapicque_step",
    "leaky_step", "lif_scan", "lif_step", "run", "synaptic_step",
]

PATHS = ("step", "sequence", "scan")


@dataclass(frozen=True)
class Model:
    """One neuron model as `run`, `simulate` and `train` see it."""

    name: str
    config: type  # its `neuron` config section
    state: type  # its state (a NamedTuple of tensors, the membrane among them)
    step: Callable  # step(current, state, params, spike_fn) -> (spikes, state)
    initial_state: Callable[[Tensor], tuple]  # from the initial membrane
    rest: Callable[[object], Scalar]  # the membrane at rest, where a run starts unless told
    threshold: Callable[[object], Scalar]  # the firing threshold (for plots)
    trainable: bool = False  # `train` builds layers of it

    @property
    def has_synaptic_current(self) -> bool:
        return "synaptic_current" in self.state._fields


MODELS: dict[str, Model] = {
    "leaky": Model("leaky", LeakyConfig, LeakyState, leaky_step, leaky.initial_state, lambda p: 0.0,
                   lambda p: p.threshold, trainable=True),
    "synaptic": Model("synaptic", SynapticConfig, SynapticState, synaptic_step, synaptic.initial_state,
                      lambda p: 0.0, lambda p: p.threshold, trainable=True),
    "lapicque": Model("lapicque", LapicqueConfig, LeakyState, lapicque_step, lapicque.initial_state,
                      lambda p: 0.0, lambda p: p.threshold),
    "lif": Model("lif", LIFConfig, LIFState, lif_step, lif.initial_state, lambda p: p.v_rest_mv,
                 lambda p: p.v_thresh_mv),
}


def path_for(model: str, params, state, spike_fn: SpikeFn, recording: bool) -> str:
    """Which form of the model runs: the rule, in one place.

    sequence: leaky and synaptic from rest, with a surrogate, every number but beta one value (a learned threshold
              needs autograd through the steps), whole tensors out (training);
    scan:     lif with one value per parameter and no gradient (simulation);
    step:     everything else, the reference."""
    if model in ("leaky", "synaptic") and state is None and not recording and hasattr(spike_fn, "kind") \
            and _one_value(params.threshold) and (model == "leaky" or _one_value(params.alpha)):
        return "sequence"
    if model == "lif" and lif.uses_scan(params) and spike_fn is heaviside:
        return "scan"
    return "step"


def run(model: str, currents: Tensor, params, state: tuple | None = None, spike_fn: SpikeFn = heaviside, *,
        path: str | None = None, spikes_out: Tensor | None = None, membrane_out: Tensor | None = None,
        synaptic_out: Tensor | None = None) -> Trace:
    """Neurons of `model` driven by currents (time, ...): their spikes, membranes and final state.

    state: where to start (None: at rest). spike_fn: the spike's function (`heaviside`, or a surrogate for
    training). The outputs, if given, are filled in place: spikes_out (bool or float, like currents),
    membrane_out and synaptic_out (time, k) with the first k neurons' traces (a simulation records a few of
    many); `Trace.membranes` is then membrane_out. `path` forces a form (tests compare them). The sequence path
    returns no final state (training starts every sample from rest)."""
    if path is not None and path not in PATHS:
        raise ValueError(f"path {path!r}: expected one of {', '.join(PATHS)}")
    m = MODELS[model]
    recording = spikes_out is not None or membrane_out is not None or synaptic_out is not None
    path = path or path_for(model, params, state, spike_fn, recording)
    if path == "sequence":
        kind, slope = getattr(spike_fn, "kind", "straight_through"), getattr(spike_fn, "slope", 1.0)
        alpha = getattr(params, "alpha", 0.0)
        spikes, membranes = run_sequence(currents, model, _as_tensor(params.beta, currents), float(alpha),
                                         float(params.threshold), params.reset, kind, slope, params.reset_delay)
        return Trace(spikes, membranes, None)
    if state is None:
        state = m.initial_state(torch.zeros_like(currents[0]) + m.rest(params))
    if path == "scan":
        if spikes_out is None:
            spikes_out = torch.empty(currents.shape, dtype=torch.bool, device=currents.device)
        state = lif_scan(currents, state, params, spikes_out, membrane_out)
        return Trace(spikes_out, membrane_out, state)
    return _steps(m, currents, params, state, spike_fn, spikes_out, membrane_out, synaptic_out)


def _steps(m: Model, currents, params, state, spike_fn, spikes_out, membrane_out, synaptic_out) -> Trace:
    """The step function over time: the reference path, and the one with autograd through every step."""
    spikes, membranes = [], []
    keep_all = spikes_out is None
    for t in range(currents.shape[0]):
        s, state = m.step(currents[t], state, params, spike_fn)
        if keep_all:
            spikes.append(s)
            membranes.append(state.membrane)
        else:
            spikes_out[t] = s > 0 if spikes_out.dtype == torch.bool else s
        if membrane_out is not None:
            membrane_out[t] = state.membrane[..., :membrane_out.shape[-1]]
        if synaptic_out is not None:
            synaptic_out[t] = state.synaptic_current[..., :synaptic_out.shape[-1]]
    if keep_all:
        return Trace(torch.stack(spikes), torch.stack(membranes), state)
    return Trace(spikes_out, membrane_out, state)


def _one_value(x) -> bool:
    """A number, or a 0-dim tensor without a gradient."""
    return not isinstance(x, Tensor) or (x.dim() == 0 and not x.requires_grad)


def _as_tensor(x, like: Tensor) -> Tensor:
    return x if isinstance(x, Tensor) else torch.tensor(float(x), dtype=like.dtype, device=like.device)
