"""What each command does, between the CLI (parsing, printing) and the library (computing).

Each function loads and checks the config, runs the library, and writes the run folder.
It prints nothing: it reports progress through a callback and returns what it made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from snnrun import plots
from snnrun.config import ConfigError, apply_overrides, dump_yaml, load_yaml, to_dict
from snnrun.devices import resolve_device
from snnrun.runs import StagedRun, environment, write_json, write_text
from snnrun.simulation import SimulationConfig, SimulationResult, parse_simulation, simulate
from snnrun.stimulus import KINDS

DEFAULT_SIMULATION = Path("configs/step.yaml")


@dataclass
class SimulationRun:
    folder: Path
    config: SimulationConfig
    result: SimulationResult


def load_simulation_config(path: Path | None, overrides: list[str], current: str | None = None,
                           device: str | None = None) -> SimulationConfig:
    """The config file (default configs/step.yaml, or the built-in defaults) with `--current` and `--set` applied."""
    if path is None:
        data, source = (load_yaml(DEFAULT_SIMULATION), str(DEFAULT_SIMULATION)) if DEFAULT_SIMULATION.is_file() \
            else ({"name": "step-current"}, "defaults")
    else:
        data, source = load_yaml(path), str(path)
    if current is not None:
        if current not in KINDS:
            raise ConfigError(f"{current!r} is not allowed; expected one of {', '.join(KINDS)}", source="--current")
        data = dict(data, stimulus={"kind": current})  # the new kind with its own defaults
        data["name"] = f"{current}-current"
    data = apply_overrides(data, overrides)
    if device is not None:
        data["device"] = device
    with blame_overrides(overrides, device):
        cfg = parse_simulation(data, source)
        resolve_device(cfg.device, source=source)  # a device this machine lacks is an error before any work starts
    return cfg


@contextlib.contextmanager
def blame_overrides(overrides: list[str], device: str | None) -> Iterator[None]:
    """Name the command-line option, not the file, when the bad value came from `--set` or `--device`."""
    try:
        yield
    except ConfigError as error:
        given = {item.partition("=")[0].strip(): item for item in overrides}
        if device is not None:
            given["device"] = f"--device {device}"
        key = error.key or ""
        origin = next((item for k, item in given.items() if key == k or key.startswith(k + ".")), None)
        if origin is None:
            raise
        option = origin if origin.startswith("--") else f"--set {origin}"
        source = f"{error.source} ({option})" if error.source else option
        raise ConfigError(error.detail, source=source, key=error.key) from None


def run_simulation(cfg: SimulationConfig, out: Path, progress: Callable[[int], None] | None = None) -> SimulationRun:
    """Simulate, then write the run folder: config, environment, traces, metrics and plots."""
    device = resolve_device(cfg.device)
    result = simulate(cfg, device, progress)
    with StagedRun(out, cfg.name) as run:
        folder = run.path
        write_text(folder / "config.yaml", dump_yaml(to_dict(cfg)))
        write_json(folder / "env.json", environment(str(device)))
        np.savez_compressed(folder / "traces.npz", t=result.time, current=result.current,
                            membrane=result.membrane, spikes=result.spikes)
        write_json(folder / "metrics.json", dict(result.metrics, simulation_seconds=result.seconds))
        _plot_simulation(cfg, result, folder)
        write_text(folder / "run.log", _simulation_log(cfg, result, device))
    return SimulationRun(run.final, cfg, result)


def _plot_simulation(cfg: SimulationConfig, result: SimulationResult, folder: Path) -> None:
    physical = cfg.neuron.model == "lif"
    current_unit, membrane_unit = ("nA", "mV") if physical else ("", "")
    title = f"{cfg.name}: {cfg.neuron.model} neuron, {cfg.stimulus.kind} input"
    plots.current_membrane_spikes(result, folder / "current_membrane_spikes.png", title, current_unit, membrane_unit)
    if cfg.neurons > 1:
        plots.raster(result, folder / "raster.png", title)
    if result.amplitude is not None:
        rate = np.asarray(result.metrics["per_neuron"]["firing_rate"], dtype=float)
        plots.fi_curve(result.amplitude, rate, folder / "fi_curve.png", result.metrics["units"]["firing_rate"],
                       current_unit, f"f–I curve: {cfg.neuron.model} neuron, {cfg.stimulus.kind} input")


def _simulation_log(cfg: SimulationConfig, result: SimulationResult, device) -> str:
    population = result.metrics["population"]
    return (f"simulated {cfg.neurons} {cfg.neuron.model} neuron(s) for {cfg.time_steps} steps on {device} "
            f"in {result.seconds:.3f} s\n"
            f"total spikes {population['total_spikes']}, mean rate {population['mean_firing_rate']:.4g} "
            f"{result.metrics['units']['firing_rate']}\n")
