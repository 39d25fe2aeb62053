"""`simulate`: a population of neurons driven by a stimulus, one vectorised loop over time.

The config schema of a simulation lives here too: the neuron section (its class
chosen by `model`) and the top level. `simulate()` is pure: it returns arrays and
metrics and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from snnrun import neurons
from snnrun.config import ConfigError, choice, field, integer, number, parse, per_neuron_values
from snnrun.metrics import spike_train_metrics
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
        else:
            beta = torch.exp(-self.dt / _values(self.tau, device, dtype))
        return neurons.LeakyParameters(beta, _values(self.threshold, device, dtype), self.reset)

    def clock(self) -> Clock:
        return Clock(1.0, "step")


@dataclass(frozen=True)
class LapicqueNeuron:
    model: str = choice("lapicque", MODEL_NAMES, "neuron model (chooses the keys below)")
    R: float | list = number(5.0, "resistance", minimum=0, exclusive_minimum=True, per_neuron=True)
    C: float | list = number(1e-3, "capacitance", minimum=0, exclusive_minimum=True, per_neuron=True)
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


def parse_simulation(data: dict, source: str | None) -> SimulationConfig:
    return parse(SimulationConfig, data, source=source,
                 sections={"neuron": parse_neuron, "stimulus": parse_stimulus})


# --------------------------------------------------------------------------- running


@dataclass
class SimulationResult:
    """Traces of the recorded neurons (time x recorded) and metrics of all neurons."""

    time: np.ndarray
    current: np.ndarray
    membrane: np.ndarray
    spikes: np.ndarray
    threshold: np.ndarray  # per recorded neuron
    amplitude: np.ndarray | None  # per neuron, when the stimulus amplitude differs between neurons
    clock: Clock
    metrics: dict
    seconds: float = 0.0


def simulate(cfg: SimulationConfig, device: torch.device | str = "cpu",
             progress: Callable[[int], None] | None = None, chunk_steps: int = 256) -> SimulationResult:
    """Run the population for `cfg.time_steps` steps; `progress(n)` is told of every n steps done."""
    import time

    device = torch.device(device)
    dtype = DTYPES[cfg.dtype]
    model = neurons.MODELS[cfg.neuron.model]
    params = cfg.neuron.parameters(device, dtype)
    n, steps = cfg.neurons, cfg.time_steps
    recorded = min(n, cfg.record_neurons)

    initial = cfg.neuron.initial_membrane
    if initial is None:  # lif: start at rest
        initial = cfg.neuron.v_rest_mv
    membrane0 = torch.as_tensor(initial, dtype=dtype, device=device).expand(n).clone()
    state = model.initial_state(membrane0)
    generator = torch.Generator(device=device)
    seed = getattr(cfg.stimulus, "seed", None)
    generator.manual_seed(cfg.seed if seed is None else seed)

    spikes_all = torch.zeros((steps, n), dtype=torch.bool, device=device)
    membrane_rec = torch.empty((steps, recorded), dtype=dtype, device=device)
    current_rec = torch.empty((steps, recorded), dtype=dtype, device=device)

    # lif with one value per parameter runs the in-place scan; everything else the step function
    scan = cfg.neuron.model == "lif" and not any(
        isinstance(getattr(params, k), torch.Tensor) for k in ("tau_ms", "v_rest_mv", "v_reset_mv", "v_thresh_mv",
                                                               "r_mohm"))
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, steps, chunk_steps):
            stop = min(start + chunk_steps, steps)
            current = cfg.stimulus.current(start, stop, n, steps, device, dtype, generator)
            current_rec[start:stop] = current[:, :recorded]
            if scan:
                state = neurons.lif_scan(current, state, params, spikes_all[start:stop], membrane_rec[start:stop])
            else:
                for i in range(stop - start):
                    spikes, state = model.step(current[i], state, params)
                    spikes_all[start + i] = spikes > 0
                    membrane_rec[start + i] = state.membrane[:recorded]
            if progress is not None:
                progress(stop - start)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started

    clock = cfg.neuron.clock()
    metrics = spike_train_metrics(spikes_all, clock.dt, clock.unit)
    threshold = model.threshold(params)
    threshold = torch.as_tensor(threshold, dtype=dtype).expand(n)[:recorded].cpu().numpy()
    amplitude = getattr(cfg.stimulus, "amplitude", None)
    return SimulationResult(
        time=np.arange(steps) * clock.dt,
        current=current_rec.cpu().numpy(),
        membrane=membrane_rec.cpu().numpy(),
        spikes=spikes_all[:, :recorded].cpu().numpy(),
        threshold=threshold,
        amplitude=np.asarray(amplitude, dtype=float) if isinstance(amplitude, list) else None,
        clock=clock,
        metrics=metrics,
        seconds=seconds,
    )
