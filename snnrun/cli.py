"""The `snnrun` command line: parse arguments, call `snnrun.commands`, print results.

Errors a user can fix (bad config, missing device, unwritable folder) print one line
on stderr and exit with code 2; the last line on stdout is always the run folder.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from snnrun import __version__
from snnrun.config import ConfigError

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


def user_errors(command):
    """Turn problems a user can fix into one line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ConfigError as error:
            err.print(f"[bold red]error:[/bold red] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as error:
            where = f": {error.filename}" if getattr(error, "filename", None) else ""
            err.print(f"[bold red]error:[/bold red] {error.strerror or error}{where}", highlight=False, soft_wrap=True)
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
    device: DeviceOption = None,
) -> None:
    """Drive LIF neurons with an input current; plot current, membrane and spikes; write metrics."""
    from snnrun.commands import load_simulation_config, run_simulation

    cfg = load_simulation_config(config, set_ or [], current, device)
    with progress_bar("simulate") as bar:
        task = bar.add_task("simulate", total=cfg.time_steps)
        run = run_simulation(cfg, out_dir, lambda n: bar.advance(task, n))
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


@app.command(epilog="Example:\n\n  snnrun train configs/mnist.yaml --set train.epochs=3")
@user_errors
def train(config: Annotated[Path, typer.Argument(help="YAML config.")]) -> None:
    """Train a feedforward LIF network on MNIST (not yet available)."""
    err.print("[bold red]error:[/bold red] `snnrun train` is not available yet (it comes with MNIST training).")
    raise typer.Exit(2)


@app.command(name="eval", epilog="Example:\n\n  snnrun eval outputs/train/2026-01-01_12-00-00_mnist")
@user_errors
def evaluate(run: Annotated[Path, typer.Argument(help="Run folder or checkpoint.")]) -> None:
    """Score a trained run on the test set (not yet available)."""
    err.print("[bold red]error:[/bold red] `snnrun eval` is not available yet (it comes with MNIST training).")
    raise typer.Exit(2)


def main() -> None:
    app(prog_name="snnrun")


if __name__ == "__main__":
    sys.exit(main())
