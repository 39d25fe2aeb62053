"""What each command does, between the CLI (parsing, printing) and the library (computing).

Each function loads and checks the config, runs the library, and writes the run folder.
It prints nothing: it reports progress through a callback and returns what it made.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from snnrun import compare, distributed, event_data, neurons, nir_graph, plots, stdp, trials
from snnrun import sweep as sweeps
from snnrun.config import (
    ConfigError,
    KindSwitch,
    NIRFileError,
    RunFolderError,
    UserError,
    apply_overrides,
    config_path,
    dump_yaml,
    load_yaml,
    switch_kinds,
    to_dict,
)
from snnrun.data import Split
from snnrun.devices import available_memory, resolve_device
from snnrun.evaluation import TrainedRun, evaluate_run, load_network, locate
from snnrun.network import Network
from snnrun.runs import (
    StagedRun,
    claim_run_dir,
    ensure_writable,
    environment,
    flatten,
    write_csv,
    write_json,
    write_text,
)
from snnrun.schema import (
    SIMULATION_KINDS,
    TRAIN_KINDS,
    ConvSpec,
    SimulationConfig,
    STDPConfig,
    TrainConfig,
    config_to_dict,
    parse_simulation,
    parse_train,
)
from snnrun.simulation import SimulationResult, check_memory, memory_estimate, simulate
from snnrun.stimulus import KINDS
from snnrun.tensorboard_log import TensorBoardLog, require_tensorboard
from snnrun.training import (
    RESUME_KEYS,
    Callbacks,
    CheckpointError,
    TrainingInterrupted,
    cpu_threads,
    encode,
    initial_weights,
    load_splits,
    read_checkpoint,
    save_checkpoint,
    train,
    using_threads,
)

DEFAULT_SIMULATION = Path("configs/step.yaml")


@dataclass
class SimulationRun:
    folder: Path
    config: SimulationConfig
    result: SimulationResult


def load_simulation_config(path: Path | None, overrides: list[str], current: str | None = None,
                           device: str | None = None, notes: list[str] | None = None) -> SimulationConfig:
    """The config file (default configs/step.yaml, or the built-in defaults) with `--current` and `--set` applied.

    A section whose kind the command line changes (`--current`, `--set neuron.model=...`) starts from the new
    kind's defaults; `notes` (if given) is told which keys of the file were dropped, and of unit-fitted defaults.
    Too little memory for the run is an error here, before any work."""
    notes = notes if notes is not None else []
    path = config_path(DEFAULT_SIMULATION if path is None else path)
    data, source = load_yaml(path), str(path)
    changes = list(overrides)
    if current is not None:
        if current not in KINDS:
            raise ConfigError(f"{current!r} is not allowed; expected one of {', '.join(KINDS)}", source="--current")
        stimulus = data.get("stimulus")
        old = stimulus.get("kind", "step") if isinstance(stimulus, dict) else "step"
        if data.get("name") in (None, f"{old}-current"):  # a name that only said the stimulus follows it
            data = dict(data, name=f"{current}-current")
        changes = [f"stimulus.kind={current}", *changes]
    data, switched = switch_kinds(data, changes, SIMULATION_KINDS, source)
    notes += [switch.note() for switch in switched]
    data = apply_overrides(data, changes)
    if device is not None:
        data["device"] = device
    with blame_overrides(overrides, device, current):
        cfg = parse_simulation(data, source, notes)
        resolve_device(cfg.device, source=source)  # a device this machine lacks is an error before any work starts
        check_memory(cfg, available_memory(), source)
    notes += _unit_mismatch(data, changes, switched, source)
    return cfg


def _unit_mismatch(data: dict, changes: list[str], switched: list[KindSwitch], source: str) -> list[str]:
    """A note when the neuron was switched between unitless and physical (nA, mV) models while the stimulus's
    currents still come from the file, written for the other."""
    neuron = next((switch for switch in switched if switch.section == "neuron"), None)
    if neuron is None or any(switch.section == "stimulus" for switch in switched):
        return []
    old_unit, new_unit = (neurons.MODELS[name].config.current_unit for name in (neuron.old, neuron.new))
    if old_unit == new_unit:
        return []
    set_keys = {item.partition("=")[0].strip() for item in changes}
    stimulus = data.get("stimulus") if isinstance(data.get("stimulus"), dict) else {}
    kept = {k: v for k, v in stimulus.items() if k in ("amplitude", "values", "bias", "start")
            and f"stimulus.{k}" not in set_keys}
    if not kept:
        return []
    units = f"currents in {new_unit}" if new_unit else "unitless currents"
    shown = ", ".join(f"{k} {v}" for k, v in kept.items())
    return [f"stimulus: {shown} from {source} was written for a {neuron.old} neuron; the {neuron.new} neuron "
            f"takes {units}: set it (--set stimulus.amplitude=...) or choose the stimulus kind (--current KIND) to "
            "start from defaults that fit it"]


@contextlib.contextmanager
def blame_overrides(overrides: list[str], device: str | None, current: str | None = None) -> Iterator[None]:
    """Name the command-line option, not the file, when the bad value came from `--set`, `--device` or
    `--current`."""
    try:
        yield
    except UserError as error:  # a config value, or a device this machine lacks: both name their key
        given = {"stimulus": f"--current {current}"} if current is not None else {}
        given.update({item.partition("=")[0].strip(): f"--set {item}" for item in overrides})
        if device is not None:
            given["device"] = f"--device {device}"
        keys = [error.key or "", *error.related]
        # a key at fault is the one set, lies under it (model.hidden[0].size under model.hidden), or is a section
        # the setting created on its way down
        origin = next((item for k, item in given.items() for key in keys
                       if key == k or key.startswith((k + ".", k + "[")) or k.startswith(key + ".")), None)
        if origin is None:
            raise
        source = f"{error.source} ({origin})" if error.source else origin
        raise type(error)(error.detail, source=source, key=error.key, related=error.related) from None


def run_simulation(cfg: SimulationConfig, out: Path, progress: Callable[[int], None] | None = None,
                   into: Path | None = None, notes: list[str] | None = None) -> SimulationRun:
    """Simulate, then write the run folder (a new one under `out`, or exactly `into`): config, environment,
    traces, metrics and plots; `notes` (from `load_simulation_config`) go into run.log."""
    device = resolve_device(cfg.device)
    ensure_writable(out if into is None else into)
    _check_empty(into)
    available = available_memory()
    spare = None if available is None else max(0, available - sum(memory_estimate(cfg).values()))
    result = simulate(cfg, device, progress, spike_memory=spare)
    with StagedRun(out, cfg.name, into) as run:
        folder = run.path
        write_text(folder / "config.yaml", dump_yaml(to_dict(cfg)))
        write_json(folder / "env.json", environment(str(device)))
        synaptic = {} if result.synaptic is None else {"synaptic_current": result.synaptic}
        np.savez_compressed(folder / "traces.npz", t=result.time, current=result.current,
                            membrane=result.membrane, spike_steps=result.spike_steps,
                            spike_neurons=result.spike_neurons, **synaptic)
        write_json(folder / "metrics.json", dict(result.metrics, simulation_seconds=result.seconds,
                                                         engine=result.engine))
        _plot_simulation(cfg, result, folder)
        write_text(folder / "run.log", "".join(f"{note}\n" for note in notes or []) +
                   _simulation_log(cfg, result, device))
    return SimulationRun(run.final, cfg, result)


def _plot_simulation(cfg: SimulationConfig, result: SimulationResult, folder: Path) -> None:
    current_unit, membrane_unit = cfg.neuron.current_unit, cfg.neuron.membrane_unit
    title = f"{cfg.name}: {cfg.neuron.model} neuron, {'no' if cfg.stimulus.kind == 'none' else cfg.stimulus.kind} input"
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
            f"({result.engine} engine) in {result.seconds:.3f} s\n"
            f"total spikes {population['total_spikes']}, mean rate {population['mean_firing_rate']:.4g} "
            f"{result.metrics['units']['firing_rate']}\n")


# --------------------------------------------------------------------------- train and eval


@dataclass
class TrainingRun:
    folder: Path
    config: TrainConfig
    summary: dict


def load_train_config(path: Path | None, overrides: list[str], device: str | None = None,
                      resume: Path | None = None, force: bool = False,
                      notes: list[str] | None = None) -> tuple[TrainConfig, Path | None]:
    """The config to train with, and the run folder to continue when resuming (its config.yaml must be the
    one the checkpoint was trained with, unless `force`). A section whose kind the command line changes
    (`--set encoding.kind=rate`) starts from the new kind's defaults; `notes` (if given) says what was dropped."""
    notes = notes if notes is not None else []
    if resume is not None and path is not None:
        raise ConfigError(f"--resume continues the run with its own config.yaml, so {path} would be ignored; give "
                          "either a config (a new run) or --resume RUN_DIR", source="snnrun train")
    if resume is not None:
        if not (resume / "checkpoints" / "last.pt").is_file():
            raise RunFolderError("nothing to resume: no checkpoints/last.pt in this folder", source=str(resume))
        if (resume / "summary.json").is_file():
            raise RunFolderError("this run has finished; a finished run is never overwritten", source=str(resume))
        path = resume / "config.yaml"
    if path is None:
        raise ConfigError("give a config file (e.g. configs/mnist.yaml) or --resume RUN_DIR", source="snnrun train")
    path = config_path(path)
    data, switched = switch_kinds(load_yaml(path), overrides, TRAIN_KINDS, str(path))
    notes += [switch.note() for switch in switched]
    data = apply_overrides(data, overrides)
    if device is not None:
        data["device"] = device
    with blame_overrides(overrides, device):
        cfg = parse_train(data, str(path))
        resolve_device(cfg.device, source=str(path))
        if isinstance(cfg, TrainConfig) and cfg.train.init_from is not None and resume is None:
            initial_weights(cfg)  # the weights exist and fit the network: checked before any work
    if resume is not None and overrides:
        original = parse_train(load_yaml(path), str(path))
        if config_to_dict(original) != config_to_dict(cfg):
            raise ConfigError("--set cannot change a run being resumed (it must end as it began)", source="--set")
    if resume is not None:
        checkpoint = resume / "checkpoints" / "last.pt"
        keys = stdp.RESUME_KEYS if isinstance(cfg, STDPConfig) else RESUME_KEYS
        try:
            saved = read_checkpoint(checkpoint, keys=keys).get("config")
        except CheckpointError as error:
            raise RunFolderError(f"{error}; nothing to resume from", source=str(checkpoint)) from None
        edited = config_changes(_resolved_again(saved), config_to_dict(cfg)) if saved is not None else []
        if edited and not force:
            raise RunFolderError(f"config.yaml was edited after the checkpoint was written ({'; '.join(edited)}); "
                                 "restore it, or pass --force to continue with the edited config",
                                 source=str(path))
    return cfg, resume


def continue_finished(finished: Path, epochs: int, out: Path, into: Path | None = None) -> Path:
    """A new run folder that continues a finished run to `epochs` epochs: its checkpoints, metrics and config
    (with train.epochs raised) copied in, ready for `--resume`. The finished run stays as it was."""
    if not (finished / "summary.json").is_file():
        raise RunFolderError("--epochs continues a finished run into a new folder; this one has not finished "
                             "(resume it first: snnrun train --resume RUN)", source=str(finished))
    last = finished / "checkpoints" / "last.pt"
    data = load_yaml(finished / "config.yaml")
    learning_stdp = isinstance(data, dict) and data.get("learning") == "stdp"
    try:
        state = read_checkpoint(last, keys=stdp.RESUME_KEYS if learning_stdp else RESUME_KEYS)
    except (CheckpointError, FileNotFoundError) as error:
        raise RunFolderError(f"cannot continue from it ({error})", source=str(last)) from None
    done = int(state["position"][0]) if learning_stdp else int(state["epoch"])
    if epochs <= done:
        raise ConfigError(f"{epochs} is not allowed; the run has trained {done} epochs, so give more",
                          source="--epochs")
    data.setdefault("train", {})["epochs"] = epochs
    cfg = parse_train(data, str(finished / "config.yaml"))
    state["config"] = config_to_dict(cfg)
    schedule = state.get("schedule")
    if isinstance(schedule, dict) and "T_max" in schedule:  # cosine: anneal over the new total
        schedule["T_max"] = schedule["T_max"] // done * epochs
    ensure_writable(out if into is None else into)
    _check_empty(into)
    folder = claim_run_dir(out, cfg.name, into=into)
    write_text(folder / "config.yaml", dump_yaml(config_to_dict(cfg)))
    (folder / "checkpoints").mkdir()
    save_checkpoint(folder / "checkpoints" / "last.pt", state)
    shutil.copyfile(finished / "checkpoints" / "best.pt", folder / "checkpoints" / "best.pt")
    if (finished / "metrics.jsonl").is_file():
        shutil.copyfile(finished / "metrics.jsonl", folder / "metrics.jsonl")
    write_json(folder / "env.json", environment(cfg.device))
    write_text(folder / "run.log", f"continued from {finished} after its {done} epoch(s), to {epochs} epochs\n")
    return folder


def _resolved_again(saved: dict) -> dict:
    """A checkpoint's config as this version resolves it: keys added since it was written take their
    defaults (which keep the behaviour of before), so only real edits count as edits."""
    try:
        return config_to_dict(parse_train(saved, "checkpoint"))
    except UserError:  # no longer valid: compared as it was saved, every difference shown
        return saved


def config_changes(before: dict, after: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every dotted key whose value differs between two config dicts."""
    changes = []
    for key in sorted(set(before) | set(after), key=str):
        name = f"{prefix}{key}"
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changes += config_changes(old, new, f"{name}.")
        elif old != new:
            changes.append(f"{name}: {old!r} -> {new!r}")
    return changes


class ProcessFailed(UserError):
    """A process of a `--nproc` run failed and the launcher stopped the others; exit code 2 when every failed
    process reported an error the user can fix (it exited with 2), else 1."""

    def __init__(self, message: str, *, exit_code: int = 1, **where) -> None:
        super().__init__(message, **where)
        self.exit_code = exit_code


def launch_processes(nproc: int, args: list[str], device: str, ranks: distributed.Ranks) -> int | None:
    """Train on `nproc` processes of this machine: run `snnrun ARGS` (the train command line, without --nproc)
    on each through torchrun's launcher; the exit code to leave with (0, or 130/143 when stopped by Ctrl-C or
    SIGTERM: the ranks have saved a checkpoint). None when this process trains by itself: one process asked
    for, or it is already one of torchrun's ranks. On CUDA (`device` not cpu) one process per GPU: more
    processes than GPUs is a ConfigError; a failed process is a ProcessFailed (the others are stopped)."""
    if nproc <= 1 or ranks.active:
        return None
    gpus = _cuda_devices() if device != "cpu" else 0
    if 0 < gpus < nproc:
        raise ConfigError(f"--nproc {nproc} is not allowed: this machine has {gpus} CUDA device(s), one "
                          "process per GPU (or use --device cpu)", source="--nproc")
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    try:
        distributed.launch(nproc, args)
    except SignalException as why:  # Ctrl-C or SIGTERM: the ranks have saved a checkpoint and stopped
        return 128 + int(why.sigval)
    except ChildFailedError as why:
        codes = {failure.exitcode for failure in why.failures.values()}
        interrupted = codes & {130, 143}
        if interrupted:
            return interrupted.pop()
        rank, first = why.get_first_failure()
        how = f"was killed by signal {-first.exitcode}" if first.exitcode < 0 else f"exited with {first.exitcode}"
        raise ProcessFailed(f"process {rank} of {nproc} {how}; the others were stopped. The last checkpoint is "
                            "kept (snnrun train --resume RUN_DIR continues from it).",
                            exit_code=2 if codes == {2} else 1) from None
    return 0


def _cuda_devices() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_training(cfg: TrainConfig, out: Path, callbacks: Callbacks, resume: Path | None = None,
                 on_folder: Callable[[Path], None] | None = None,
                 ranks: distributed.Ranks = distributed.SINGLE, into: Path | None = None,
                 notes: list[str] | None = None) -> TrainingRun | None:
    """Train into a new run folder under `out` (or exactly `into`, or continue `resume`), then write metrics,
    summary and plots.

    Under torchrun (`ranks.active`) every rank trains its share; rank 0 alone writes the folder and returns
    the run, the others return None."""
    if isinstance(cfg, STDPConfig):
        return _train_stdp(cfg, out, callbacks, resume, on_folder, into, notes)
    device = resolve_device(cfg.device)
    if cfg.tensorboard:
        require_tensorboard(source="tensorboard")
    ensure_writable(resume / "checkpoints" if resume is not None else into if into is not None else out)
    _check_empty(into)
    with using_threads(cpu_threads(cfg) if device.type == "cpu" else None):
        if device.type == "cpu" and resume is None:  # threads change the sums' rounding: config.yaml says how many
            cfg = replace(cfg, threads=torch.get_num_threads())
        if ranks.active:
            device = distributed.start(ranks, device)
        try:
            splits = load_splits(cfg, device)  # read once, handed to the training, TensorBoard and the plots
            return _train_in_folder(cfg, splits, out, callbacks, resume, on_folder, device, ranks, into, notes)
        finally:
            if ranks.active:
                distributed.finish()


def _check_empty(into: Path | None) -> None:
    if into is not None and into.is_dir() and any(into.iterdir()):
        raise RunFolderError("the folder is not empty; a run is never written over another (give a new folder)",
                             source=str(into))


def _train_in_folder(cfg, splits, out, callbacks, resume, on_folder, device, ranks, into,
                     notes=None) -> TrainingRun | None:
    if not ranks.main:
        train(cfg, resume, device, callbacks, resume=resume is not None, ranks=ranks, splits=splits)
        distributed.all_done(ranks)  # while rank 0 writes the run folder
        return None
    if resume is None:
        folder = claim_run_dir(out, cfg.name, into=into)
        write_text(folder / "config.yaml", dump_yaml(config_to_dict(cfg)))
        write_json(folder / "env.json", environment(str(device)))
    else:
        folder = resume
    if on_folder is not None:
        on_folder(folder)
    epoch_done = callbacks.epoch_done

    def record_epoch(record: dict) -> None:
        # Rewritten whole: epochs redone after a crash replace their old lines instead of repeating them.
        path = folder / "metrics.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        kept = [line for line in lines if json.loads(line)["epoch"] < record["epoch"]]
        write_text(path, "".join(line + "\n" for line in [*kept, json.dumps(record)]))
        epoch_done(record)

    callbacks = replace(callbacks, epoch_done=record_epoch)
    board = _tensorboard_log(cfg, folder, device, splits) if cfg.tensorboard else None
    if board is not None:
        callbacks = replace(callbacks, inspect=board.epoch)
    with open(folder / "run.log", "a", encoding="utf-8") as log:
        processes = f" x {ranks.world} processes" if ranks.active else ""
        log.write(f"{'resumed' if resume else 'started'} on {device}{processes}: {' '.join(sys.argv)}\n")
        log.write("".join(f"{note}\n" for note in notes or []))
    try:
        summary = train(cfg, folder, device, callbacks, resume=resume is not None, ranks=ranks, splits=splits)
    finally:
        if board is not None:
            board.close()
    history = summary.pop("history")
    # whole again from the checkpointed history: a run killed between a checkpoint and its metrics line loses none
    write_text(folder / "metrics.jsonl", "".join(json.dumps(record) + "\n" for record in history))
    write_csv(folder / "metrics.csv", [flatten(record) for record in history])
    skipped = _plot_training(cfg, folder, history, device, splits[2], callbacks.should_stop)
    if skipped:  # stopped while plotting: weights and scores are final, but without summary.json the run is not
        # finished, so `--resume` (which only scores and plots again: last.pt holds the final epoch) completes it
        accuracy = f"test accuracy {100 * summary['test_accuracy']:.2f} %"
        with open(folder / "run.log", "a", encoding="utf-8") as log:
            log.write(f"stopped while plotting ({accuracy}, final); not drawn: {', '.join(skipped)}; "
                      f"`snnrun train --resume {folder}` draws them and writes summary.json\n")
        distributed.all_done(ranks)
        raise TrainingInterrupted(f"stopped while plotting, after the final test score ({accuracy}); "
                                  f"not drawn: {', '.join(skipped)}")
    write_json(folder / "summary.json", summary)  # last: its presence marks a finished run
    with open(folder / "run.log", "a", encoding="utf-8") as log:
        log.write(f"finished: test accuracy {summary['test_accuracy']:.4f}, best val {summary['best_val_accuracy']}, "
                  f"{summary['train_seconds']:.1f} s of training\n")
    distributed.all_done(ranks)
    return TrainingRun(folder, cfg, summary)


def _train_stdp(cfg: STDPConfig, out: Path, callbacks: Callbacks, resume: Path | None, on_folder, into: Path | None,
                notes: list[str] | None) -> TrainingRun:
    """`learning: stdp`: train Diehl & Cook's network into a new run folder (or continue `resume`), label, test,
    plot; the same folder layout as every training run."""
    ensure_writable(resume / "checkpoints" if resume is not None else into if into is not None else out)
    _check_empty(into)
    data = stdp.load_data(cfg)  # a missing data set fails before a folder is made
    if resume is None:
        folder = claim_run_dir(out, cfg.name, into=into)
        write_text(folder / "config.yaml", dump_yaml(config_to_dict(cfg)))
        write_json(folder / "env.json", environment("cpu"))
    else:
        folder = resume
    if on_folder is not None:
        on_folder(folder)
    with open(folder / "run.log", "a", encoding="utf-8") as log:
        log.write(f"{'resumed' if resume else 'started'} on cpu (compiled STDP loop): {' '.join(sys.argv)}\n")
        log.write("".join(f"{note}\n" for note in notes or []))
    summary = stdp.train_stdp(cfg, folder, callbacks, resume=resume is not None, data=data)
    history = summary.pop("history")
    write_text(folder / "metrics.jsonl", "".join(json.dumps(record) + "\n" for record in history))
    write_csv(folder / "metrics.csv", [flatten(record) for record in history])
    skipped = _plot_stdp(cfg, folder, history, summary, (data[2][0], int(data[3][0])), callbacks.should_stop)
    accuracy = f"test accuracy {100 * summary['test_accuracy']:.2f} %"
    if skipped:
        with open(folder / "run.log", "a", encoding="utf-8") as log:
            log.write(f"stopped while plotting ({accuracy}, final); not drawn: {', '.join(skipped)}; "
                      f"`snnrun train --resume {folder}` draws them and writes summary.json\n")
        raise TrainingInterrupted(f"stopped while plotting, after the final test score ({accuracy}); "
                                  f"not drawn: {', '.join(skipped)}")
    write_json(folder / "summary.json", summary)  # last: its presence marks a finished run
    with open(folder / "run.log", "a", encoding="utf-8") as log:
        log.write(f"finished: {accuracy}, {summary['train_seconds']:.1f} s of training\n")
    return TrainingRun(folder, cfg, summary)


def _plot_stdp(cfg: STDPConfig, folder: Path, history: list[dict], summary: dict, first: tuple[np.ndarray, int],
               should_stop: Callable[[], bool]) -> list[str]:
    """The paper's figure of learned weights, theta, assignments per class, accuracy over training, confusion,
    and the spikes for `first` (the first test image and its label)."""
    trained = stdp.load_trained(folder / "checkpoints" / "best.pt")
    title = f"{cfg.name}: {cfg.stdp.excitatory_neurons} excitatory neurons"
    accuracy = f"test accuracy {100 * summary['test_accuracy']:.2f} %"
    jobs = [("weights.png", lambda: plots.receptive_fields(trained.w, folder / "weights.png",
                                                          f"{title}: input weights (receptive fields)")),
            ("curves.png", lambda: plots.stdp_curves(history, folder / "curves.png", title)),
            ("theta.png", lambda: plots.theta(trained.theta, trained.assignments, folder / "theta.png", title)),
            ("assignments.png", lambda: plots.assignments(trained.assignments, folder / "assignments.png", title)),
            ("confusion.png", lambda: plots.confusion(np.asarray(summary["confusion"]), folder / "confusion.png",
                                                      f"{folder.name}: {accuracy}")),
            ("raster.png", lambda: _stdp_raster(cfg, trained, *first, folder / "raster.png"))]
    return plots.draw_in_turn(jobs, should_stop)


def _stdp_raster(cfg: STDPConfig, trained, image: np.ndarray, label: int, path: Path) -> None:
    """raster.png: the input, excitatory and inhibitory spikes of the frozen network for one image."""
    spikes = stdp.digit_spikes(cfg, trained, image, cfg.train.seed)
    plots.network_raster([spikes["input"], spikes["excitatory"], spikes["inhibitory"]],
                         ["input", "excitatory", "inhibitory"], image.reshape(28, 28), label, spikes["predicted"],
                         path, f"time step ({cfg.stdp.input.dt_ms} ms)")


def _tensorboard_log(cfg: TrainConfig, folder: Path, device, splits) -> TensorBoardLog:
    """A TensorBoard log whose per-epoch probe is the first 64 validation digits (test digits without a
    validation set), encoded once with a fixed seed so every epoch sees the same input."""
    _, val, test = splits
    data = val if len(val) else test
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed + 2)
    inputs = encode(data.images[:64], cfg, generator)
    sample = data.images[0].cpu().numpy()
    return TensorBoardLog(folder, (inputs, event_data.preview(sample) if cfg.data.events else sample,
                                   int(data.labels[0])))


def _plot_training(cfg: TrainConfig, folder: Path, history: list[dict], device, test: Split,
                   should_stop: Callable[[], bool] = lambda: False) -> list[str]:
    """curves.png, and raster/membrane/spike-count plots of the trained network on the first test digit.

    `should_stop()` is asked before each plot and between the GIF's frames; once it says yes nothing more is
    drawn. Returns the files not drawn (none when all were)."""
    digit: dict = {}

    def first_digit() -> dict:  # the trained network on the first test digit, run once for the plots after curves
        if not digit:
            model = load_network(locate(folder), device)
            image, label, out = _first_digit(model, cfg, test)
            digit.update(model=model, image=image, label=label, out=out, predicted=int(out.logits.argmax(dim=1)))
        return digit

    def curves() -> None:
        plots.training_curves(history, folder / "curves.png", f"{cfg.name}: {cfg.model.readout} readout, "
                              f"{cfg.encoding.kind} input, {cfg.encoding.time_steps} steps")

    def raster() -> None:
        d = first_digit()
        out = d["out"]
        layers = [spikes[:, 0].cpu().numpy() for spikes in out.recorded]
        names = ["input current" if cfg.encoding.kind == "direct" else "input"]
        names += cfg.model.layer_names[:len(out.recorded) - 1]
        plots.network_raster(layers, names, d["image"], d["label"], d["predicted"], folder / "raster.png")

    def membrane() -> None:
        d = first_digit()
        if d["out"].membrane is not None:
            plots.output_membrane(d["out"].membrane[:, 0].cpu().numpy(), cfg.model.output.firing_threshold,
                                  d["label"], folder / "membrane.png", d["predicted"],
                                  unit=cfg.model.output.membrane_unit)

    def counts() -> None:
        d = first_digit()
        out = d["out"]
        if out.spikes is not None:
            plots.spike_counts(out.spikes[:, 0].sum(dim=0).cpu().numpy(), d["label"], folder / "spike_counts.png")
        else:  # mean_current readout: no output spikes; show the readout's logits instead
            plots.spike_counts(out.logits[0].cpu().numpy(), d["label"], folder / "spike_counts.png",
                               "readout (mean current) per class")

    def animation() -> None:
        d = first_digit()
        _animate_counts(d["model"], d["image"], d["label"], d["out"], folder / "spike_counts.gif", should_stop)

    def kernels() -> None:
        weights = first_digit()["model"].linears[0].weight.detach().cpu().numpy()
        plots.conv_kernels(weights, folder / "kernels.png", f"{cfg.name}: the first convolution's kernels")

    def maps() -> None:
        d = first_digit()
        spikes = d["out"].recorded[1][:, 0].reshape(-1, *cfg.model.shapes[0]).cpu().numpy()
        plots.feature_maps(spikes, d["image"], d["label"], folder / "feature_maps.png")

    first_conv = bool(cfg.model.hidden) and isinstance(cfg.model.hidden[0], ConvSpec)
    jobs = [("curves.png", curves), ("raster.png", raster),
            *([("membrane.png", membrane)] if cfg.model.readout != "mean_current" else []),
            ("spike_counts.png", counts), ("spike_counts.gif", animation),
            *([("kernels.png", kernels), ("feature_maps.png", maps)] if first_conv else [])]
    return plots.draw_in_turn(jobs, should_stop)


def _first_digit(model, cfg: TrainConfig, data) -> tuple[np.ndarray, int, object]:
    """The network's recorded output for the first image of a split: (image, label, NetworkOutput); for event
    data the image is the recording's picture (`event_data.preview`)."""
    model.eval()
    generator = torch.Generator(device=data.images.device).manual_seed(cfg.train.seed + 1)
    with torch.no_grad():
        out = model(encode(data.images[:1], cfg, generator), record=True)
    sample = data.images[0].cpu().numpy()
    return (event_data.preview(sample) if cfg.data.events else sample), int(data.labels[0]), out


def _animate_counts(model, image: np.ndarray, label: int, out, path: Path,
                    should_stop: Callable[[], bool] | None = None) -> None:
    """spike_counts.gif: the output's cumulative spikes per class over the steps (for a mean-current readout,
    the readout of each step divided by the steps, summed so far: it ends at the logits). Raises plots.Stopped,
    writing nothing, once `should_stop()` says yes between two frames."""
    if out.spikes is not None:
        per_step, title = out.spikes[:, 0], "output spikes so far"
    else:
        with torch.no_grad():
            hidden = out.recorded[-1][:, 0].float()
            per_step, title = model.readout(hidden) / hidden.shape[0], "readout (mean current) so far"
    plots.spike_count_animation(per_step.cpu().numpy(), image, label, path, title, should_stop=should_stop)


EVAL_KEYS = ("data.", "train.subset.", "encoding.", "train.eval_batch_size", "train.seed")


def scored_with(run: TrainedRun, overrides: list[str]) -> TrainedRun:
    """The run with `--set` overrides that change how it is scored (the data, the subset, the encoding), never
    the trained network; the overrides are recorded in eval.json."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not any(key.startswith(k) if k.endswith(".") else key == k for k in EVAL_KEYS):
            raise ConfigError(f"{key} would change the trained network or its training; eval can set only data.*, "
                              "train.subset.*, encoding.*, train.eval_batch_size and train.seed",
                              source=f"--set {item}")
    if not overrides:
        return run
    source = str(run.folder / "config.yaml")
    data, _ = switch_kinds(config_to_dict(run.config), overrides, TRAIN_KINDS, source)
    with blame_overrides(overrides, None):
        return replace(run, config=parse_train(apply_overrides(data, overrides), source))


def run_evaluation(path: Path, split: str = "test", device: str | None = None,
                   should_stop: Callable[[], bool] = lambda: False, overrides: list[str] = ()) -> tuple[Path, dict]:
    """Score a run folder or checkpoint; write eval/<timestamp>_<split>/eval.json, confusion.png and
    spike_counts.gif (the first digit of the split) inside it.

    The folder is built aside and moved into place only when whole: once `should_stop()` says yes (asked
    before each plot and between the GIF's frames) nothing is written and plots.Stopped is raised."""
    if split not in ("test", "val"):
        raise ConfigError(f"{split!r} is not allowed; expected test or val", source="--split")
    run = scored_with(locate(path), list(overrides))
    if isinstance(run.config, STDPConfig):
        return _evaluate_stdp(run, split, list(overrides), should_stop)
    torch_device = resolve_device(device or run.config.device, source="--device" if device else None)
    ensure_writable(run.folder / "eval")
    model = load_network(run, torch_device)  # a damaged checkpoint fails before any data is read
    _, val_set, test_set = load_splits(run.config, torch_device)
    data = test_set if split == "test" else val_set
    report = evaluate_run(run, model, data, split)
    if overrides:
        report["overrides"] = list(overrides)
    accuracy = f"{split} accuracy {100 * report['accuracy']:.2f} %"

    def confusion() -> None:
        plots.confusion(np.asarray(report["confusion"]), staged.path / "confusion.png",
                        f"{run.folder.name}: {accuracy}")

    def animation() -> None:
        image, label, out = _first_digit(model, run.config, data)
        _animate_counts(model, image, label, out, staged.path / "spike_counts.gif", should_stop)

    with StagedRun(run.folder / "eval", split) as staged:
        write_json(staged.path / "eval.json", report)
        skipped = plots.draw_in_turn([("confusion.png", confusion), ("spike_counts.gif", animation)], should_stop)
        if skipped:
            raise plots.Stopped(f"stopped before {', '.join(skipped)} ({accuracy}); no eval folder written")
    return staged.final, report


def _evaluate_stdp(run: TrainedRun, split: str, overrides: list[str],
                   should_stop: Callable[[], bool]) -> tuple[Path, dict]:
    """eval of an STDP run: the frozen network and its assignments scored on the test images."""
    if split != "test":
        raise ConfigError(f"{split!r} is not allowed for an STDP run (it holds out no validation images); use test",
                          source="--split")
    ensure_writable(run.folder / "eval")
    try:
        trained = stdp.load_trained(run.checkpoint)
    except CheckpointError as error:
        raise RunFolderError(str(error), source=str(run.checkpoint)) from None
    _, _, images, labels = stdp.load_data(run.config)
    result = stdp.score(run.config, trained, images, labels, should_stop=should_stop)
    matrix = np.asarray(result["confusion"])
    report = {"split": split, "images": len(labels), "accuracy": result["accuracy"],
              "per_class_accuracy": (matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)).tolist(),
              "confusion": result["confusion"], "spikes_per_image": result["spikes_per_image"],
              "checkpoint": str(run.checkpoint), **({"overrides": overrides} if overrides else {})}
    accuracy = f"{split} accuracy {100 * report['accuracy']:.2f} %"
    with StagedRun(run.folder / "eval", split) as staged:
        write_json(staged.path / "eval.json", report)
        skipped = plots.draw_in_turn([("confusion.png", lambda: plots.confusion(
            matrix, staged.path / "confusion.png", f"{run.folder.name}: {accuracy}"))], should_stop)
        if skipped:
            raise plots.Stopped(f"stopped before {', '.join(skipped)} ({accuracy}); no eval folder written")
    return staged.final, report


# --------------------------------------------------------------------------- sweep


@dataclass
class SweepStudy:
    """A sweep folder with its study open: what a worker runs, or collects."""

    folder: Path
    plan: sweeps.Plan
    study: object  # optuna.Study
    storage: object  # its optuna.storages.RDBStorage


@dataclass
class SweepRun:
    folder: Path
    plan: sweeps.Plan
    outcomes: list[trials.Outcome]
    rows: list[dict]  # best first by the plan's metric
    stopped: bool
    notes: list[str]  # members queued again, plots skipped
    elsewhere: list[tuple[str, str, str]]  # (member, host, folder) of finished members another worker wrote


def plan_sweep(path: Path, grid: list[str], overrides: list[str], device: str | None = None,
               samples: int | None = None, seed: int | None = None, command: str | None = None,
               metric: str | None = None, goal: str | None = None, parallel: int | None = None,
               **search) -> tuple[dict, sweeps.Plan]:
    """The base config (the file without its sweep section, --set applied) and the plan; every planned member's
    config is checked now (for a TPE search: each range's ends and each choice), so a bad value fails before
    anything runs. `search`: make_plan's options (ranges, search, trials, maximize, minimize, pruner, prune_after)."""
    path = config_path(path)
    config, plan = sweeps.make_plan(path, grid, samples, seed, command, metric, goal, parallel, **search)
    kinds = TRAIN_KINDS if plan.command == "train" else SIMULATION_KINDS
    config = apply_overrides(switch_kinds(config, overrides, kinds, str(path))[0], overrides)
    plan.device = device
    parse_config = parse_train if plan.command == "train" else parse_simulation
    for member in plan.members or sweeps.probes(plan.axes):
        data = apply_overrides(switch_kinds(config, member.overrides, kinds, str(path))[0], member.overrides)
        if device is not None:
            data["device"] = device
        try:
            with blame_overrides(overrides, device):
                cfg = parse_config(data, str(path))
        except ConfigError as error:
            keys = {error.key, *error.related}
            at_fault = next((k for k in plan.keys for key in keys if key and (key == k or key.startswith(k + "."))),
                            None)
            if at_fault is None:
                raise
            raise ConfigError(f"{error.detail} (sweep member {member.name})", source=f"{path} (sweep grid)",
                              key=error.key) from None
        if isinstance(cfg, STDPConfig):
            raise ConfigError("stdp is not allowed in a sweep yet (its members report no per-epoch validation "
                              "score to rank or prune by); run each config with snnrun train", source=str(path),
                              key="learning")
    resolve_device(cfg.device, source="--device" if device else str(path))
    return config, plan


def start_sweep(config: dict, plan: sweeps.Plan, out: Path, name: str, storage: str | None = None,
                heartbeat: int | None = None) -> SweepStudy:
    """A new sweep folder under `out` and its study, in study.db there or in the storage URL given (opened
    first: a bad URL fails before any folder is made). The study is named after the folder."""
    plan.storage, plan.heartbeat = storage, heartbeat or plan.heartbeat
    opened = trials.open_storage(storage, plan.heartbeat) if storage else None
    ensure_writable(out)
    folder = claim_run_dir(out, name)
    plan.study = folder.name
    try:
        opened = opened or trials.open_storage(sweeps.storage_url(folder, plan), plan.heartbeat, str(folder))
        study = trials.create_study(opened, plan, config)
    except UserError:
        shutil.rmtree(folder)  # (nothing in it yet)
        raise
    sweeps.save_plan(folder, config, plan)
    return SweepStudy(folder, plan, study, opened)


def reopen_sweep(folder: Path, storage: str | None = None, heartbeat: int | None = None) -> SweepStudy:
    """A sweep folder's study, opened again (`--resume`, `--collect`); `storage` where sweep.json's URL lacks
    its password."""
    plan = sweeps.load_plan(folder)
    ensure_writable(folder)
    plan.heartbeat = heartbeat or plan.heartbeat
    url = storage or plan.storage or sweeps.storage_url(folder, plan)
    if storage is None and plan.storage is None and not (folder / sweeps.STUDY_FILE).is_file():
        raise RunFolderError(f"no {sweeps.STUDY_FILE} in the sweep folder (and no --storage)", source=str(folder))
    opened = trials.open_storage(url, plan.heartbeat, "--storage" if storage else str(folder / "sweep.json"))
    trials.read_study(opened, plan.study, source=str(folder / "sweep.json"))  # (a clear error if it is gone)
    plan.storage = storage or plan.storage
    return SweepStudy(folder, plan, trials.open_study(opened, plan), opened)


def join_sweep(storage: str, name: str, out: Path, device: str | None = None,
               heartbeat: int | None = None) -> SweepStudy:
    """Join the study `name` in the storage as one more worker, writing into `out/<name>/` (the same folder as
    the other workers' where `out` is a shared filesystem; a folder of its own elsewhere)."""
    config, plan = trials.read_study(trials.open_storage(storage), name)
    plan.storage, plan.heartbeat = storage, heartbeat or plan.heartbeat
    if device is not None:
        plan.device = device
        resolve_device(device, source="--device")
    opened = trials.open_storage(storage, plan.heartbeat)
    folder = out / name
    if (folder / "sweep.json").is_file():
        if sweeps.load_plan(folder).study != name:
            raise RunFolderError(f"a sweep folder of another study; give another --out than {out}", source=str(folder))
    elif folder.is_dir() and any(folder.iterdir()):
        raise RunFolderError("the folder is not empty and not this study's sweep folder", source=str(folder))
    else:
        ensure_writable(out)
        folder.mkdir(parents=True, exist_ok=True)
        sweeps.save_plan(folder, config, plan)
    ensure_writable(folder)
    return SweepStudy(folder, plan, trials.open_study(opened, plan, joined=True), opened)


def run_sweep(sweep: SweepStudy, parallel: int | None = None, on_start=None, on_done=None,
              should_stop: Callable[[], bool] = lambda: False, retry_failed: bool = False) -> SweepRun:
    """Run the study's waiting members in this worker until none is left, then write sweep.csv and the plots.
    retry_failed (`--resume`): members that failed before are queued again."""
    folder, plan = sweep.folder, sweep.plan
    base = parse_train if plan.command == "train" else parse_simulation
    device = resolve_device(plan.device or base(load_yaml(folder / "base.yaml"), "base.yaml").device)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    ran = trials.run_members(folder, plan, sweep.study, sweep.storage, parallel or plan.parallel, gpus, on_start,
                             on_done, should_stop, retry_failed)
    stopped = should_stop() or any(o.status == "interrupted" for o in ran.outcomes)
    return collect_sweep(sweep, ran, stopped)


def collect_sweep(sweep: SweepStudy, ran: trials.Sweep | None = None, stopped: bool = False) -> SweepRun:
    """sweep.csv, sweep.png and Optuna's plots of the whole study (every worker's members) in the sweep folder."""
    folder, plan, study = sweep.folder, sweep.plan, sweep.study
    ran = ran or trials.Sweep()
    rows = trials.collect(study, plan)
    write_csv(folder / "sweep.csv", rows)
    if ran.error is not None:
        raise ran.error
    notes = list(ran.notes)
    if any(row["status"] == "done" for row in rows):
        sweeps.check_metric(rows, plan.metric)
        label = sweeps.metric_label(folder, plan, rows)
        plots.sweep([r for r in rows if r["status"] == "done"], plan.keys, plan.metric, folder / "sweep.png",
                    folder.name, label, heat_map=plan.search == "grid")
        notes += plots.study(study, folder, folder.name, label, per_epoch=plan.command == "train")
    return SweepRun(folder, plan, ran.outcomes, sweeps.ranked(rows, plan.metric, plan.goal), stopped, notes,
                    trials.elsewhere(folder, study))


# --------------------------------------------------------------------------- compare


@dataclass
class Comparison:
    folder: Path
    runs: list
    keys: list[str]  # the config keys in which the runs differ
    rows: list[dict]


def run_compare(paths: list[Path], out: Path) -> Comparison:
    """Compare runs (a sweep folder stands for its members) into a new folder under `out`: compare.csv (the
    differing config values and final metrics of each run) and compare.png (their curves overlaid)."""
    runs = compare.load(paths)
    keys = compare.differences(runs)
    rows = compare.rows(runs)
    ensure_writable(out)
    with StagedRun(out, "compare") as staged:
        write_csv(staged.path / "compare.csv", rows)
        _plot_comparison(runs, staged.path / "compare.png")
        write_text(staged.path / "runs.txt", "".join(f"{run.folder}\n" for run in runs))
    return Comparison(staged.final, runs, keys, rows)


def _plot_comparison(runs: list, path: Path) -> None:
    if runs[0].command == "train":
        plots.compared_training([(run.label, run.history) for run in runs], path, f"{len(runs)} runs")
        return
    amplitudes = [run.config.get("stimulus.amplitude") for run in runs]
    if all(isinstance(a, list) for a in amplitudes):  # each run an f-I curve
        curves = []
        for run, amplitude in zip(runs, amplitudes, strict=True):
            rates = json.loads((run.folder / "metrics.json").read_text(encoding="utf-8"))["per_neuron"]
            order = np.argsort(amplitude)
            curves.append((run.label, np.asarray(amplitude)[order], np.asarray(rates["firing_rate"])[order]))
        unit = neurons.MODELS[runs[0].config.get("neuron.model", "leaky")].config.current_unit
        unit = f" ({unit})" if unit else ""
        plots.overlaid(curves, path, f"input amplitude{unit}", f"firing rate ({runs[0].metrics['firing_rate_unit']})",
                       f"f–I curves of {len(runs)} runs", markers=True)
        return
    curves = []
    for run in runs:  # the first neuron's membrane of each run
        with np.load(run.folder / "traces.npz") as traces:
            curves.append((run.label, traces["t"], traces["membrane"][:, 0]))
    unit = neurons.MODELS[runs[0].config.get("neuron.model", "leaky")].config.time_unit
    unit = " (steps)" if unit == "step" else f" ({unit})"
    plots.overlaid(curves, path, f"time{unit}", "membrane of neuron 0", f"membranes of {len(runs)} runs")


# --------------------------------------------------------------------------- NIR export and import


def run_export(path: Path, target: Path | None = None, dt: float = nir_graph.DEFAULT_DT) -> tuple[Path, object]:
    """Write a trained run's network (its best checkpoint, or the checkpoint given) as a NIR graph; returns the
    file and the graph. Default file: model.nir in the run folder."""
    nir_graph.require_nir()
    if not dt > 0:
        raise ConfigError(f"{dt!r} is not allowed; the step must be > 0 seconds", source="--dt")
    run = locate(path)
    if isinstance(run.config, STDPConfig):
        raise RunFolderError("an STDP network (conductance-based neurons, adaptive thresholds, synaptic delays and "
                             "inhibition between neurons of one layer) has no NIR form: NIR has no such nodes",
                             source=str(run.folder))
    model = load_network(run, torch.device("cpu"))
    graph = nir_graph.to_nir(model, config_to_dict(run.config), dt)
    target = target or run.folder / "model.nir"
    ensure_writable(target.parent)
    nir_graph.write(graph, target)
    return target, graph


def run_import(path: Path, out: Path, overrides: list[str], dt: float | None = None,
               into: Path | None = None) -> Path:
    """Build a run folder (config.yaml, checkpoints/best.pt) from a NIR graph, so `eval` scores it."""
    graph = nir_graph.read(path)
    model_data, state = nir_graph.from_nir(graph, str(path), dt)
    data = apply_overrides({"name": path.stem, **model_data}, overrides)
    with blame_overrides(overrides, None):
        cfg = parse_train(data, str(path))
    model = Network(cfg.model, cfg.encoding.time_steps)
    full = model.state_dict()  # scalar decays and thresholds come from the config; tensors from the graph
    for key, value in state.items():
        if key not in full or full[key].shape != value.shape:
            raise NIRFileError(f"the graph does not fit the network it describes ({key}: "
                               f"{tuple(value.shape)} vs {tuple(full[key].shape) if key in full else 'none'})",
                               source=str(path))
        full[key] = value
    model.load_state_dict(full)
    ensure_writable(out if into is None else into)
    _check_empty(into)
    with StagedRun(out, cfg.name, into) as run:
        write_text(run.path / "config.yaml", dump_yaml(config_to_dict(cfg)))
        write_json(run.path / "env.json", environment("cpu"))
        (run.path / "checkpoints").mkdir()
        checkpoint = {"model": model.state_dict(), "imported_from": str(path)}
        save_checkpoint(run.path / "checkpoints" / "best.pt", checkpoint)
        write_text(run.path / "run.log", f"imported from {path} ({len(graph.nodes)} NIR nodes, dt "
                   f"{(graph.metadata or {}).get('dt', dt or nir_graph.DEFAULT_DT)} s)\n")
        write_json(run.path / "summary.json", {"imported_from": str(path), "metadata": {
            k: v for k, v in (graph.metadata or {}).items() if isinstance(v, (str, int, float, bool))}})
    return run.final
