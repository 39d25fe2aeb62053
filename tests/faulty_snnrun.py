"""`snnrun` with one fault made to last long enough to kill the process inside it (used by test_faults.py).

    python tests/faulty_snnrun.py FAULT MARKER snnrun-args...

FAULT is `checkpoint:N` (the N-th write of last.pt writes half its bytes, flushes them to disk, then
stalls) or `plotting` (the training curves are drawn, then it stalls before the other plots). MARKER is a
file created when the stall begins, so the test knows when to send SIGKILL.
"""

import io
import os
import sys
import time
from pathlib import Path

import torch

from snnrun import plots
from snnrun.cli import app

fault, marker, args = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]


def stall() -> None:
    marker.touch()
    time.sleep(600)


if fault.startswith("checkpoint:"):
    nth, writes, real_save = int(fault.split(":")[1]), [], torch.save

    def save(obj, f, *rest, **options):
        if str(getattr(f, "name", "")).endswith(".last.pt.tmp"):
            writes.append(f.name)
            if len(writes) == nth:
                buffer = io.BytesIO()
                real_save(obj, buffer)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                stall()
        return real_save(obj, f, *rest, **options)

    torch.save = save
elif fault == "plotting":
    real_curves = plots.training_curves

    def curves(*rest, **options):
        real_curves(*rest, **options)
        stall()

    plots.training_curves = curves
else:
    raise SystemExit(f"unknown fault {fault}")

app(args, prog_name="snnrun")
