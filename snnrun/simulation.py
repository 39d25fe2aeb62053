"""`simulate`: a population of neurons driven by a stimulus, chunk by chunk through `neurons.run`.

`simulate()` is pure: it takes a `schema.SimulationConfig` and returns arrays and metrics, and writes nothing.
Spikes are gathered per chunk as (step, neuron) events; the memory a simulation needs is estimated before
any work (`memory_estimate`, `check_memory`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from snnrun import neurons
from snnrun.config import ConfigError
from snnrun.metrics import event_metrics
from snnrun.neurons import Clock
from snnrun.schema import SimulationConfig

Tensor = torch.Tensor

DTYPES = {"float32": torch.float32, "float64": torch.float64}
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
    engine: str = "torch"  # what ran the neurons: "numba" (the compiled kernels) or "torch"

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
    traces = 3 if neurons.MODELS[cfg.neuron.model].has_synaptic_current else 2  # membrane, current (, synaptic)
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
        initial = model.rest(params)
    try:
        engine = neurons.engine_for(cfg.engine, cfg.neuron.model, params, n * steps, device)
    except ValueError as e:
        raise ConfigError(f"{cfg.engine} cannot run this simulation: {e}; use engine: torch or auto",
                          key="engine") from None
    path = "kernel" if engine == "numba" else None
    scratch: dict = {}
    membrane0 = torch.as_tensor(initial, dtype=dtype, device=device).expand(n).clone()
    state = model.initial_state(membrane0)
    generator = torch.Generator(device=device)
    seed = getattr(cfg.stimulus, "seed", None)
    generator.manual_seed(cfg.seed if seed is None else seed)

    # rows padded to whole 8-byte words (the padding stays False): spikes are found word by word, 8x fewer scans
    spike_buffer = None if path == "kernel" else torch.zeros((chunk, -(-n // 8) * 8), dtype=torch.bool,
                                                             device=device)
    membrane_rec = torch.empty((steps, recorded), dtype=dtype, device=device)
    current_rec = torch.empty((steps, recorded), dtype=dtype, device=device)
    synaptic_rec = torch.empty((steps, recorded), dtype=dtype, device=device) \
        if model.has_synaptic_current else None
    index_dtype = torch.int32 if max(n, steps) < 2**31 else torch.int64
    event_bytes = 2 * torch.empty((), dtype=index_dtype).element_size()
    events: list[Tensor] = []
    total_events = 0

    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, steps, chunk):
            stop = min(start + chunk, steps)
            current = cfg.stimulus.current(start, stop, n, steps, device, dtype, generator)
            current_rec[start:stop] = current[:, :recorded]
            trace = neurons.run(cfg.neuron.model, current, params, state, path=path,
                                spikes_out=None if spike_buffer is None else spike_buffer[:stop - start, :n],
                                membrane_out=membrane_rec[start:stop],
                                synaptic_out=None if synaptic_rec is None else synaptic_rec[start:stop],
                                scratch=scratch)
            state = trace.state
            if trace.events is not None:
                found = trace.events.to(index_dtype)
            else:
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
        engine=engine,
    )
