"""Hold an `snnrun` process at a known point, so that a test can signal or kill it there instead of racing it.

Test-only: the tests put this folder on PYTHONPATH of the processes they start, and Python imports
`sitecustomize` at start-up in every one of them (a sweep's members and torchrun's ranks inherit the
environment). Nothing happens unless SNNRUN_TEST_HOLD names a point:

    checkpoint:N        just after the N-th last.pt this process writes is whole on disk
    batch:N:K           inside the K-th training batch after the N-th last.pt (forward pass and loss computed,
                        weights not yet updated)
    checkpoint-write:N  inside the N-th write of last.pt: half its bytes are in the temporary file, flushed to disk
    plotting            curves.png drawn, the other plots not yet

With SNNRUN_TEST_HOLD_ONLY set, only a process whose command line contains that text holds (one sweep member,
say, by its folder's name); the others run as usual.

On reaching it the process creates the file SNNRUN_TEST_HOLD_MARKER and waits there. At `checkpoint` and
`batch` it waits until its stop flag is set (Ctrl-C or SIGTERM, `snnrun.cli.StopFlag`), then carries on,
so it stops at its next batch boundary as it would have anyway; at the two faults it waits until it is killed.
A process still held after HOLD_CAP_S seconds (no test came) says so and exits with 3, so a broken test
cannot leave it behind. The conftest fixture `hold` sets the variables and waits for the marker.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import io
import os
import sys
import time
import traceback

HOLD_CAP_S = 600
POINTS = ("checkpoint", "batch", "checkpoint-write", "plotting")


def _chain_to_the_next_sitecustomize() -> None:
    """Run the sitecustomize this one shadows (a distribution's, say), as Python would have."""
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def _install(point: str, marker: str) -> None:
    import torch

    from snnrun import cli, plots, training

    kind, *numbers = point.split(":")
    if kind not in POINTS or not all(n.isdigit() for n in numbers) or \
            len(numbers) != {"checkpoint": 1, "batch": 2, "checkpoint-write": 1, "plotting": 0}[kind]:
        raise ValueError(f"SNNRUN_TEST_HOLD={point!r} is not one of: checkpoint:N, batch:N:K, "
                         "checkpoint-write:N, plotting")
    numbers = [int(n) for n in numbers]
    flags: list = []  # this process's stop flags (Ctrl-C, SIGTERM)
    checkpoints_written = [0]
    batches_after = [0]

    def hold(until_stopped: bool) -> None:
        with open(marker, "a"):
            pass
        give_up = time.monotonic() + HOLD_CAP_S
        while not (until_stopped and any(flag.is_set() for flag in flags)):
            if time.monotonic() > give_up:
                sys.stderr.write(f"snnrun test hold: held at {point} for {HOLD_CAP_S} s and no test came; "
                                 "exiting\n")
                sys.stderr.flush()
                os._exit(3)
            time.sleep(0.01)

    real_installed = cli.StopFlag.installed

    @contextlib.contextmanager
    def installed(self):
        flags.append(self)
        with real_installed(self) as flag:
            yield flag

    cli.StopFlag.installed = installed

    real_save_checkpoint = training.save_checkpoint

    def save_checkpoint(path, state):
        real_save_checkpoint(path, state)
        if path.name == "last.pt":
            checkpoints_written[0] += 1
            if kind == "checkpoint" and checkpoints_written[0] == numbers[0]:
                hold(until_stopped=True)

    training.save_checkpoint = save_checkpoint  # train() looks it up in its module on every call

    if kind == "batch":
        real_loss_of = training.loss_of

        def loss_of(*args, **kwargs):
            loss = real_loss_of(*args, **kwargs)
            if torch.is_grad_enabled() and checkpoints_written[0] >= numbers[0]:  # training, not scoring
                batches_after[0] += 1
                if batches_after[0] == numbers[1]:
                    hold(until_stopped=True)
            return loss

        training.loss_of = loss_of

    if kind == "checkpoint-write":
        real_save, writes = torch.save, []

        def save(obj, f, *rest, **options):
            if str(getattr(f, "name", "")).endswith(".last.pt.tmp"):
                writes.append(f.name)
                if len(writes) == numbers[0]:
                    buffer = io.BytesIO()
                    real_save(obj, buffer)
                    data = buffer.getvalue()
                    f.write(data[: len(data) // 2])
                    f.flush()
                    os.fsync(f.fileno())
                    hold(until_stopped=False)
            return real_save(obj, f, *rest, **options)

        torch.save = save

    if kind == "plotting":
        real_curves = plots.training_curves

        def curves(*args, **kwargs):
            real_curves(*args, **kwargs)
            hold(until_stopped=False)

        plots.training_curves = curves  # commands.py calls plots.training_curves through the module


_chain_to_the_next_sitecustomize()
if os.environ.get("SNNRUN_TEST_HOLD") and os.environ.get("SNNRUN_TEST_HOLD_ONLY", "") in " ".join(sys.orig_argv):
    try:
        _install(os.environ["SNNRUN_TEST_HOLD"], os.environ["SNNRUN_TEST_HOLD_MARKER"])
    except BaseException:  # a process asked to hold that cannot must not run on as if nothing were asked
        traceback.print_exc()
        sys.stderr.write("snnrun test hold: could not be installed\n")
        sys.stderr.flush()
        os._exit(3)
