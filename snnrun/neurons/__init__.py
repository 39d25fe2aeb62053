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

import importlib.util
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
    "ENGINES", "MODELS", "MODEL_NAMES", "RESETS", "Clock", "LIFConfig", "LIFParameters", "LIFState",
    "LapicqueConfig", "LapicqueParameters", "LeakyConfig", "LeakyParameters", "LeakyState", "Model",
    "SynapticConfig", "SynapticParameters", "SynapticState", "Trace", "engine_for", "heaviside",
    "lapicque_capacitance", "lapicque_step", "leaky_step", "lif_scan", "lif_step", "run", "synaptic_step",
]

PATHS = ("step", "sequence", "scan", "kernel")
ENGINES = ("auto", "torch", "numba")


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
                 lambda p: p.v_thresh_mv, trainable=True),
}


def path_for(model: str, params, state, spike_fn: SpikeFn, recording: bool) -> str:
    """Which form of the model runs: the rule, in one place.

    sequence: leaky and synaptic from rest, with a surrogate, every number but beta one value (a learned threshold
              needs autograd through the steps), whole tensors out (training); lif likewise, every number one value;
    scan:     lif with one value per parameter and no gradient (simulation);
    step:     everything else, the reference.
    (kernel:  the compiled loop of kernels.py, chosen by `engine_for` for a whole simulation, not per chunk.)"""
    if model in ("leaky", "synaptic") and state is None and not recording and hasattr(spike_fn, "kind") \
            and _one_value(params.threshold) and (model == "leaky" or _one_value(params.alpha)):
        return "sequence"
    if model == "lif" and state is None and not recording and hasattr(spike_fn, "kind") and lif.uses_scan(params):
        return "sequence"
    if model == "lif" and lif.uses_scan(params) and spike_fn is heaviside:
        return "scan"
    return "step"


# Neuron-steps from which `engine: auto` takes the compiled kernel, by the torch form it replaces: loading numba
# and a cached kernel costs about 0.6-0.9 s in a fresh process, repaid from about these sizes on (measured in a
# fresh process, README "Engines"); lif's torch scan is three to four times faster than the other models' steps.
KERNEL_MIN_WORK = {"scan": 10**9, "step": 10**8}


def kernel_unfit(model: str, params, device) -> str | None:
    """Why the compiled kernel cannot run this work (None: it can)."""
    if device.type != "cpu":
        return f"the compiled kernels run on the CPU, not {device.type}"
    per_neuron = [k for k, v in vars(params).items() if isinstance(v, Tensor) and v.numel() > 1]
    if per_neuron:
        return f"the compiled kernels take one value per parameter (per-neuron: {', '.join(per_neuron)})"
    if importlib.util.find_spec("numba") is None:  # (found without importing it: 0.6 s)
        return "numba is not installed (pip install numba)"
    return None


def engine_for(engine: str, model: str, params, work: int, device) -> str:
    """"torch" or "numba" for a simulation of `work` neuron-steps: the rule, in one place. auto takes numba
    where the kernel can run and the work repays loading it; numba asked for where it cannot run is a
    ValueError saying why."""
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if engine == "torch":
        return "torch"
    why = kernel_unfit(model, params, device)
    if engine == "numba":
        if why:
            raise ValueError(why)
        return "numba"
    torch_form = "scan" if model == "lif" and lif.uses_scan(params) else "step"
    return "numba" if work >= KERNEL_MIN_WORK[torch_form] and why is None else "torch"


def run(model: str, currents: Tensor, params, state: tuple | None = None, spike_fn: SpikeFn = heaviside, *,
        path: str | None = None, spikes_out: Tensor | None = None, membrane_out: Tensor | None = None,
        synaptic_out: Tensor | None = None, scratch: dict | None = None) -> Trace:
    """Neurons of `model` driven by currents (time, ...): their spikes, membranes and final state.

    state: where to start (None: at rest). spike_fn: the spike's function (`heaviside`, or a surrogate for
    training). The outputs, if given, are filled in place: spikes_out (bool or float, like currents),
    membrane_out and synaptic_out (time, k) with the first k neurons' traces (a simulation records a few of
    many); `Trace.membranes` is then membrane_out. `path` forces a form (tests compare them). The sequence path
    returns no final state (training starts every sample from rest). The kernel path (currents (steps, neurons
    or 1), CPU, heaviside) returns the spikes as `Trace.events`, (step, neuron) rows in time order, and no
    dense spikes; `scratch`, a dict kept from chunk to chunk, holds its event buffers."""
    if path is not None and path not in PATHS:
        raise ValueError(f"path {path!r}: expected one of {', '.join(PATHS)}")
    m = MODELS[model]
    recording = spikes_out is not None or membrane_out is not None or synaptic_out is not None
    path = path or path_for(model, params, state, spike_fn, recording)
    if path == "sequence" and model == "lif":
        spikes, membranes = lif.lif_sequence(currents, params, spike_fn.kind, spike_fn.slope)
        return Trace(spikes, membranes, None)
    if path == "sequence":
        kind, slope = getattr(spike_fn, "kind", "straight_through"), getattr(spike_fn, "slope", 1.0)
        alpha = getattr(params, "alpha", 0.0)
        spikes, membranes = run_sequence(currents, model, _as_tensor(params.beta, currents), float(alpha),
                                         float(params.threshold), params.reset, kind, slope, params.reset_delay)
        return Trace(spikes, membranes, None)
    if state is None:
        state = m.initial_state(torch.zeros_like(currents[0]) + m.rest(params))
    if path == "kernel":
        return _kernel(model, currents, params, state, membrane_out, synaptic_out, scratch)
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


def _kernel(model, currents, params, state, membrane_out, synaptic_out, scratch) -> Trace:
    from snnrun.neurons import kernels

    steps, n = currents.shape[0], state.membrane.shape[0]
    scratch = {} if scratch is None else scratch
    events = scratch.get("events")
    if events is None or not events.fits(steps, n):
        events = scratch["events"] = kernels.Events(steps, n)
    threads = torch.get_num_threads()
    kernels.set_threads(threads)
    try:
        found, state = kernels.run_chunk(model, currents, params, state, membrane_out, synaptic_out, events)
    finally:  # numba's OpenMP layer sets the process's OpenMP thread count, which is torch's too
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return Trace(None, membrane_out, state, torch.from_numpy(found))


def _one_value(x) -> bool:
    """A number, or a 0-dim tensor without a gradient."""
    return not isinstance(x, Tensor) or (x.dim() == 0 and not x.requires_grad)


def _as_tensor(x, like: Tensor) -> Tensor:
    return x if isinstance(x, Tensor) else torch.tensor(float(x), dtype=like.dtype, device=like.device)
