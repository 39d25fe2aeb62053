"""`simulate`: a population of neurons driven by a stimulus, one vectorised loop over time.

The config schema of a simulation lives here too: the neuron section (its class
chosen by `model`) and the top level. `simulate()` is pure: it returns arrays and
metrics and writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from snnrun import neurons
from snnrun.config import ConfigError, KindKey, choice, field, integer, number, parse, per_neuron_values
from snnrun.metrics import event_metrics
from snnrun.stimulus import parse_stimulus

Tensor = torch.Tensor

DTYPES = {"float32": torch.float32, "float64": torch.float64}
MODEL_NAMES = ("leaky", "lapicque", "synaptic", "lif")


@dataclass(frozen=True)
class Clock:
    """The length of a step and its unit ("ms", "s", or "step" when the model has no units)."""

    dt: float
    unit: str

    @property
    def seconds(self) -> float | None:
        return {"ms": 1e-3, "s": 1.0}.get(self.unit)


def _beta_rule(doc):
    return number(None, doc, minimum=0, maximum=1, per_neuron=True, nullable=True)


# --------------------------------------------------------------------------- neuron sections


@dataclass(frozen=True)
class LeakyNeuron:
    model: str = choice("leaky", MODEL_NAMES, "neuron model (chooses the keys below)")
    beta: float | list | None = _beta_rule("membrane decay per step (default 0.8; or give tau and dt)")
    tau: float | list | None = number(None, "membrane time constant; beta = exp(-dt/tau)", minimum=0,
                                      exclusive_minimum=True, per_neuron=True, nullable=True)
    dt: float | None = number(None, "step length, same unit as tau", minimum=0, exclusive_minimum=True,
                              nullable=True)
    threshold: float | list = number(1.0, "firing threshold", minimum=0, exclusive_minimum=True, per_neuron=True)
    reset: str = choice("subtract", neurons.RESETS, "reset mechanism after a spike")
    initial_membrane: float | list = number(0.0, "membrane at step 0", per_neuron=True)

    def validate(self, path, source):
        if self.beta is not None and (self.tau is not None or self.dt is not None):
            raise ConfigError("give beta, or tau and dt, not both", source=source, key=f"{path}.beta",
                              related=(f"{path}.tau", f"{path}.dt"))
        if (self.tau is None) != (self.dt is None):
            missing, given = ("dt", "tau") if self.dt is None else ("tau", "dt")
            raise ConfigError("tau and dt go together (beta = exp(-dt/tau))", source=source, key=f"{path}.{missing}",
                              related=(f"{path}.{given}",))
        if self.beta is None and self.tau is None:
            object.__setattr__(self, "beta", 0.8)

    def parameters(self, device, dtype) -> neurons.LeakyParameters:
        if self.beta is not None:
            beta = _values(self.beta, device, dtype)
        else:  # a Python float stays one (math.exp); a per-neuron tensor takes torch.exp
            tau = _values(self.tau, device, dtype)
            beta = torch.exp(-self.dt / tau) if isinstance(tau, Tensor) else math.exp(-self.dt / tau)
        return neurons.LeakyParameters(beta, _values(self.threshold, device, dtype), self.reset)

    def clock(self) -> Clock:
        return Clock(1.0, "step")


@dataclass(frozen=True)
class LapicqueNeuron:
    model: str = choice("lapicque", MODEL_NAMES, "neuron model (chooses the keys below)")
    R: float | list = number(5.0, "resistance (ohm, with the current in A and the membrane in V)", minimum=0,
                             exclusive_minimum=True, per_neuron=True)
    C: float | list | None = number(None, "capacitance (F; default 1e-3, or give beta)", minimum=0,
                                    exclusive_minimum=True, per_neuron=True, nullable=True)
    time_step: float = number(1e-3, "step length in seconds (forward Euler)", minimum=0, exclusive_minimum=True)
    beta: float | None = number(None, "instead of C: C = time_step/(R*ln(1/beta)), as snnTorch derives it",
                                minimum=0, maximum=1, exclusive_minimum=True, nullable=True)
    threshold: float | list = number(1.0, "firing threshold", minimum=0, exclusive_minimum=True, per_neuron=True)
    reset: str = choice("subtract", neurons.RESETS, "reset mechanism after a spike")
    initial_membrane: float | list = number(0.0, "membrane at step 0", per_neuron=True)

    def validate(self, path, source):
        if self.beta is not None and self.beta >= 1:
            raise ConfigError(f"{self.beta} is not allowed; expected a number in (0, 1)", source=source,
                              key=f"{path}.beta")
        if self.beta is not None and self.C is not None:
            raise ConfigError("give C, or beta (C = time_step/(R*ln(1/beta))), not both", source=source,
                              key=f"{path}.beta", related=(f"{path}.C",))
        if self.beta is None and self.C is None:
            object.__setattr__(self, "C", 1e-3)

    def parameters(self, device, dtype) -> neurons.LapicqueParameters:
        R = _values(self.R, device, dtype)
        if self.beta is not None:
            C = neurons.lapicque_capacitance(self.beta, R, self.time_step)
        else:
            C = _values(self.C, device, dtype)
        return neurons.LapicqueParameters(R, C, self.time_step, _values(self.threshold, device, dtype), self.reset)

    def clock(self) -> Clock:
        return Clock(self.time_step, "s")


@dataclass(frozen=True)
class SynapticNeuron:
    model: str = choice("synaptic", MODEL_NAMES, "neuron model (chooses the keys below)")
    alpha: float | list = number(0.9, "synaptic current decay per step", minimum=0, maximum=1, per_neuron=True)
    beta: float | list = number(0.8, "membrane decay per step", minimum=0, maximum=1, per_neuron=True)
    threshold: float | list = number(1.0, "firing threshold", minimum=0, exclusive_minimum=True, per_neuron=True)
    reset: str = choice("subtract", neurons.RESETS, "reset mechanism after a spike")
    initial_membrane: float | list = number(0.0, "membrane at step 0", per_neuron=True)

    def parameters(self, device, dtype) -> neurons.SynapticParameters:
        return neurons.SynapticParameters(_values(self.alpha, device, dtype), _values(self.beta, device, dtype),
                                          _values(self.threshold, device, dtype), self.reset)

    def clock(self) -> Clock:
        return Clock(1.0, "step")


@dataclass(frozen=True)
class LIFNeuron:
    model: str = choice("lif", MODEL_NAMES, "neuron model (chooses the keys below)")
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
    initial_membrane: float | list | None = number(None, "membrane at step 0 in mV (null: v_rest_mv)",
                                                   per_neuron=True, nullable=True)

    def validate(self, path, source):
        for reset, thresh in _pairs(self.v_reset_mv, self.v_thresh_mv):
            if reset >= thresh:
                raise ConfigError(f"{reset} is not allowed; expected v_reset_mv below v_thresh_mv ({thresh})",
                                  source=source, key=f"{path}.v_reset_mv", related=(f"{path}.v_thresh_mv",))

    def parameters(self, device, dtype) -> neurons.LIFParameters:
        v = lambda x: _values(x, device, dtype)  # noqa: E731
        return neurons.LIFParameters(v(self.tau_ms), v(self.v_rest_mv), v(self.v_reset_mv), v(self.v_thresh_mv),
                                     self.refractory_ms, v(self.r_mohm), self.dt_ms, self.method)

    def clock(self) -> Clock:
        return Clock(self.dt_ms, "ms")


NEURONS = {"leaky": LeakyNeuron, "lapicque": LapicqueNeuron, "synaptic": SynapticNeuron, "lif": LIFNeuron}


def _pairs(a, b):
    n = max(len(a) if isinstance(a, list) else 1, len(b) if isinstance(b, list) else 1)
    at = lambda x, i: x[i % len(x)] if isinstance(x, list) else x  # noqa: E731
    return [(at(a, i), at(b, i)) for i in range(n)]


def _values(value, device, dtype) -> float | Tensor:
    """A number stays a Python float (cheapest in the step); a per-neuron list becomes a tensor."""
    if isinstance(value, list):
        return torch.as_tensor(value, dtype=dtype, device=device)
    return float(value)


def parse_neuron(data, key, source):
    data = {} if data is None else data
    model = data.get("model", "leaky") if isinstance(data, dict) else None
    if not isinstance(model, str) or model not in NEURONS:
        raise ConfigError(f"{model!r} is not allowed; expected one of {', '.join(NEURONS)}", source=source,
                          key=f"{key}.model")
    return parse(NEURONS[model], data, path=key, source=source)


# --------------------------------------------------------------------------- top level


@dataclass(frozen=True)
class SimulationConfig:
    name: str = field("simulation", "string", "suffix of the run folder")
    time_steps: int = integer(200, "number of steps to simulate", minimum=1)
    neurons: int = integer(1, "population size", minimum=1)
    seed: int = integer(0, "seed for random stimuli")
    device: str = field("cpu", "string", "cpu, cuda, cuda:N, mps or auto")
    dtype: str = choice("float32", DTYPES, "floating-point precision")
    record_neurons: int = integer(1000, "neurons whose traces are saved and plotted (metrics cover all)", minimum=1)
    neuron: LeakyNeuron | LapicqueNeuron | SynapticNeuron | LIFNeuron = None  # type: ignore[assignment]
    stimulus: object = None

    other_command = ("train", frozenset({"data", "model", "encoding", "train"}))

    def validate(self, path, source):
        for section_name in ("neuron", "stimulus"):
            section = getattr(self, section_name)
            for name, values in per_neuron_values(section).items():
                if len(values) != self.neurons:
                    raise ConfigError(
                        f"a list of {len(values)} values is not allowed; expected one number, or a list of "
                        f"{self.neurons} (one per neuron, see `neurons`)", source=source, key=f"{section_name}.{name}",
                        related=("neurons",))
        steps = getattr(self.stimulus, "steps", None)
        if steps is not None and max(steps) >= self.time_steps:
            raise ConfigError(f"{max(steps)} is not allowed; expected pulse steps below time_steps "
                              f"({self.time_steps})", source=source, key="stimulus.steps", related=("time_steps",))


KIND_KEYS = (KindKey("neuron", "model", "leaky"), KindKey("stimulus", "kind", "step"))


def parse_simulation(data: dict, source: str | None, notes: list[str] | None = None) -> SimulationConfig:
    """The simulation config; `notes` (if given) is told of stimulus defaults fitted to the neuron's units."""
    holder: dict = {}

    stimulus = data.get("stimulus") if isinstance(data, dict) else None
    no_input = isinstance(stimulus, dict) and stimulus.get("kind") == "none"

    def neuron_section(section, key, where):
        neuron = parse_neuron(section, key, where)
        if no_input and not (isinstance(section, dict) and "initial_membrane" in section):
            # with no input a membrane at rest shows a flat line: start it near threshold, to relax from there
            start = _relaxation_start(neuron)
            if notes is not None:
                notes.append(f"{key}.initial_membrane: {start} (no input: the membrane starts at 90 % of the way "
                             "from rest to threshold and relaxes)")
            neuron = parse_neuron({**(section or {}), "initial_membrane": start}, key, where)
        holder["neuron"] = neuron
        return neuron

    def stimulus_section(section, key, where):
        neuron = holder.get("neuron")
        if isinstance(neuron, LIFNeuron) and (section is None or isinstance(section, dict)):
            section = section or {}
            fitted = {k: v for k, v in physical_stimulus_defaults(section.get("kind", "step"), neuron,
                                                                  section).items() if k not in section}
            if fitted and notes is not None:
                notes.append(f"{key}: defaults in nA fitted to the lif neuron (rheobase "
                             f"{_rheobase(neuron):.3g} nA): " + ", ".join(f"{k} {v}" for k, v in fitted.items()))
            section = {**section, **fitted}
        return parse_stimulus(section, key, where)

    return parse(SimulationConfig, data, source=source,
                 sections={"neuron": neuron_section, "stimulus": stimulus_section})


def _relaxation_start(neuron) -> float | list:
    """90 % of the way from rest to threshold (0 is rest for the unitless models), per neuron where the
    threshold is."""
    if isinstance(neuron, LIFNeuron):
        rest, thresh = neuron.v_rest_mv, neuron.v_thresh_mv
    else:
        rest, thresh = 0.0, neuron.threshold
    if isinstance(rest, list) or isinstance(thresh, list):
        n = len(rest) if isinstance(rest, list) else len(thresh)
        at = lambda x, i: x[i] if isinstance(x, list) else x  # noqa: E731
        return [_round(at(rest, i) + 0.9 * (at(thresh, i) - at(rest, i))) for i in range(n)]
    return _round(rest + 0.9 * (thresh - rest))


def _first(value) -> float:
    return float(value[0] if isinstance(value, list) else value)


def _rheobase(neuron: LIFNeuron) -> float:
    """The smallest constant current (nA) that makes the neuron fire: (v_thresh - v_rest) / R."""
    return (_first(neuron.v_thresh_mv) - _first(neuron.v_rest_mv)) / _first(neuron.r_mohm)


def physical_stimulus_defaults(kind: str, neuron: LIFNeuron, given: dict) -> dict:
    """Stimulus amplitudes in nA that drive a `lif` neuron (its first neuron's parameters) as the unitless
    defaults drive the discrete models: a step above the rheobase, pulses that each cross the threshold, and
    so on. Timings stay in steps."""
    rheobase = _rheobase(neuron)
    if kind == "pulse":  # one pulse of `width` steps lifts the membrane 1.5x the threshold's distance from
        width = given.get("width", 1)  # rest or from reset, whichever is larger
        width = width if isinstance(width, int) and width >= 1 else 1
        rise = 1 - math.exp(-width * neuron.dt_ms / _first(neuron.tau_ms))
        gap = _first(neuron.v_thresh_mv) - min(_first(neuron.v_rest_mv), _first(neuron.v_reset_mv))
        return {"amplitude": _round(1.5 * gap / _first(neuron.r_mohm) / rise)}
    table = {
        "step": {"amplitude": 4 / 3 * rheobase},
        "ramp": {"amplitude": 2 * rheobase},
        "piecewise": {"values": [0.0, 0.5 * rheobase, rheobase * 4 / 3, 2 * rheobase]},
        "sine": {"bias": rheobase, "amplitude": 0.5 * rheobase},
        "poisson": {"amplitude": 2 * rheobase / _probability(given.get("p", 0.1))},
    }
    fitted = table.get(kind, {})
    return {k: [_round(x) for x in v] if isinstance(v, list) else _round(v) for k, v in fitted.items()}


def _probability(value) -> float:
    """The poisson section's p as a number for fitting the amplitude (the schema checks p itself later)."""
    try:
        p = _first(value)
    except (TypeError, ValueError, IndexError):
        return 0.1
    return p if 0 < p <= 1 else 0.1


def _round(x: float) -> float:
    return float(f"{x:.3g}")


# --------------------------------------------------------------------------- running


@dataclass
class SimulationResult:
    """Traces of the recorded neurons (time x recorded), spikes of all neurons as events, and metrics of all
    neurons.

    Spikes are kept as Brian2's SpikeMonitor keeps them: one (step, neuron) pair per spike, in time order, so a
    large population over many steps costs memory in proportion to its spikes, not to neurons x steps."""

    time: np.ndarray
    current: np.ndarray
    membrane: np.ndarray
    spike_steps: np.ndarray  # step of each spike, ascending
    spike_neurons: np.ndarray  # neuron of each spike
    threshold: np.ndarray  # per recorded neuron
    amplitude: np.ndarray | None  # per neuron, when the stimulus amplitude differs between neurons
    clock: Clock
    metrics: dict
    seconds: float = 0.0
    synaptic: np.ndarray | None = None  # synaptic current (time x recorded) of the synaptic model

    @property
    def recorded(self) -> int:
        return self.membrane.shape[1]

    @property
    def spikes(self) -> np.ndarray:
        """The recorded neurons' spikes as a dense boolean (time x recorded) array."""
        dense = np.zeros((len(self.time), self.recorded), dtype=bool)
        keep = self.spike_neurons < self.recorded
        dense[self.spike_steps[keep], self.spike_neurons[keep]] = True
        return dense


CHUNK_BYTES = 64 * 2**20  # spikes (and per-neuron currents) of one chunk of steps stay below this
METRIC_BYTES_PER_NEURON = 400  # six per-neuron statistics as Python lists, then as JSON text


def chunk_steps_for(neurons: int, limit: int = 256) -> int:
    """Steps simulated per chunk: at most `limit`, fewer for large populations (a chunk's buffers stay small)."""
    return max(1, min(limit, CHUNK_BYTES // max(neurons, 1)))


def memory_estimate(cfg: SimulationConfig) -> dict[str, int]:
    """Bytes a simulation holds at its peak, by part, before the spikes (which are counted as they come)."""
    size = torch.empty((), dtype=DTYPES[cfg.dtype]).element_size()
    n, steps = cfg.neurons, cfg.time_steps
    recorded = min(n, cfg.record_neurons)
    traces = 3 if cfg.neuron.model == "synaptic" else 2  # membrane, current (, synaptic current)
    chunk = chunk_steps_for(n)
    return {
        "traces": steps * (recorded * size * traces + 8),
        "state": n * size * 8,  # state, scratch and the temporaries of one step
        "chunk": chunk * n * (1 + 2 * size),  # a chunk's spikes, current and random draws
        "metrics": n * METRIC_BYTES_PER_NEURON,
    }


def check_memory(cfg: SimulationConfig, available: int | None, source: str | None = None) -> None:
    """A ConfigError, before any work, when the simulation would need more memory than is `available`."""
    if available is None:
        return
    parts = memory_estimate(cfg)
    needed = sum(parts.values())
    if needed <= available:
        return
    recorded = min(cfg.neurons, cfg.record_neurons)
    if parts["traces"] >= max(parts.values()):
        what = (f"the traces of {recorded:,} recorded neuron(s) over {cfg.time_steps:,} steps take "
                f"{_gb(parts['traces'])}")
        key, related, advice = "time_steps", ("record_neurons",), "reduce record_neurons or time_steps"
    else:
        what = f"{cfg.neurons:,} neurons' state and statistics take {_gb(needed - parts['traces'])}"
        key, related, advice = "neurons", (), "reduce neurons"
    raise ConfigError(f"this simulation needs about {_gb(needed)} of memory, more than the {_gb(available)} "
                      f"available ({what}); {advice}", source=source, key=key, related=related)


def _gb(size: float) -> str:
    return f"{size / 2**30:.3g} GB" if size >= 2**30 else f"{size / 2**20:.3g} MB"


def spike_events(spikes: Tensor) -> Tensor:
    """(step, neuron) of every True in a contiguous boolean (steps, width) block, width a multiple of 8, in time
    order: the nonzero 8-byte words first, then the spikes inside those (a sparse block costs a scan of one
    eighth of its elements)."""
    steps, width = spikes.shape
    hit = spikes.view(torch.int64).flatten().nonzero().squeeze(1)
    inside = spikes.view(-1, 8)[hit].nonzero()  # (spikes, 2): which hit word, which byte of it
    flat = hit[inside[:, 0]] * 8 + inside[:, 1]
    return torch.stack((flat // width, flat % width), dim=1)


def simulate(cfg: SimulationConfig, device: torch.device | str = "cpu",
             progress: Callable[[int], None] | None = None, chunk_steps: int | None = None,
             spike_memory: int | None = None) -> SimulationResult:
    """Run the population for `cfg.time_steps` steps; `progress(n)` is told of every n steps done.

    Spikes are gathered chunk by chunk as (step, neuron) events; past `spike_memory` bytes of them the run stops
    with a ConfigError that says what to reduce."""
    import time

    device = torch.device(device)
    dtype = DTYPES[cfg.dtype]
    model = neurons.MODELS[cfg.neuron.model]
    params = cfg.neuron.parameters(device, dtype)
    n, steps = cfg.neurons, cfg.time_steps
    recorded = min(n, cfg.record_neurons)
    chunk = chunk_steps or chunk_steps_for(n)

    initial = cfg.neuron.initial_membrane
    if initial is None:  # lif: start at rest
        initial = cfg.neuron.v_rest_mv
    membrane0 = torch.as_tensor(initial, dtype=dtype, device=device).expand(n).clone()
    state = model.initial_state(membrane0)
    generator = torch.Generator(device=device)
    seed = getattr(cfg.stimulus, "seed", None)
    generator.manual_seed(cfg.seed if seed is None else seed)

    # rows padded to whole 8-byte words (the padding stays False): spikes are found word by word, 8x fewer scans
    spike_buffer = torch.zeros((chunk, -(-n // 8) * 8), dtype=torch.bool, device=device)
    membrane_rec = torch.empty((steps, recorded), dtype=dtype, device=device)
    current_rec = torch.empty((steps, recorded), dtype=dtype, device=device)
    synaptic_rec = torch.empty((steps, recorded), dtype=dtype, device=device) \
        if cfg.neuron.model == "synaptic" else None
    index_dtype = torch.int32 if max(n, steps) < 2**31 else torch.int64
    event_bytes = 2 * torch.empty((), dtype=index_dtype).element_size()
    events: list[Tensor] = []
    total_events = 0

    # lif with one value per parameter runs the in-place scan; everything else the step function
    scan = cfg.neuron.model == "lif" and not any(
        isinstance(getattr(params, k), torch.Tensor) for k in ("tau_ms", "v_rest_mv", "v_reset_mv", "v_thresh_mv",
                                                               "r_mohm"))
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, steps, chunk):
            stop = min(start + chunk, steps)
            current = cfg.stimulus.current(start, stop, n, steps, device, dtype, generator)
            current_rec[start:stop] = current[:, :recorded]
            fired = spike_buffer[:stop - start, :n]
            if scan:
                state = neurons.lif_scan(current, state, params, fired, membrane_rec[start:stop])
            else:
                for i in range(stop - start):
                    spikes, state = model.step(current[i], state, params)
                    fired[i] = spikes > 0
                    membrane_rec[start + i] = state.membrane[:recorded]
                    if synaptic_rec is not None:
                        synaptic_rec[start + i] = state.synaptic_current[:recorded]
            found = spike_events(spike_buffer[:stop - start]).to(index_dtype)
            if len(found):
                found[:, 0] += start
                events.append(found)
                total_events += len(found)
                if spike_memory is not None and total_events * event_bytes > spike_memory:
                    raise ConfigError(
                        f"the spikes outgrew the memory left for them: {total_events:,} spikes "
                        f"({_gb(total_events * event_bytes)}) by step {stop:,} of {steps:,}; reduce time_steps or "
                        "neurons (or the input that drives them)", key="time_steps", related=("neurons",))
            if progress is not None:
                progress(stop - start)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started

    pairs = torch.cat(events) if events else torch.zeros((0, 2), dtype=index_dtype, device=device)
    clock = cfg.neuron.clock()
    metrics = event_metrics(pairs[:, 0], pairs[:, 1], steps, n, clock.dt, clock.unit)
    threshold = model.threshold(params)
    threshold = torch.as_tensor(threshold, dtype=dtype).expand(n)[:recorded].cpu().numpy()
    amplitude = getattr(cfg.stimulus, "amplitude", None)
    return SimulationResult(
        time=np.arange(steps) * clock.dt,
        current=current_rec.cpu().numpy(),
        membrane=membrane_rec.cpu().numpy(),
        spike_steps=pairs[:, 0].cpu().numpy(),
        spike_neurons=pairs[:, 1].cpu().numpy(),
        threshold=threshold,
        amplitude=np.asarray(amplitude, dtype=float) if isinstance(amplitude, list) else None,
        clock=clock,
        metrics=metrics,
        seconds=seconds,
        synaptic=synaptic_rec.cpu().numpy() if synaptic_rec is not None else None,
    )
