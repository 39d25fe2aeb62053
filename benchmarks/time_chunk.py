"""Peak memory and training time against the time steps, with and without train.time_chunk.

`python benchmarks/time_chunk.py`: `snnrun train` in fresh processes on N-MNIST-format recordings that the tests'
writer makes (13 per class; 8C5-MP2-32-10, batch 64, 2 threads, one epoch of 128 recordings), at 50 to 400 steps.
Prints summary.json's peak_memory_mb (the process's peak resident memory) and train_seconds for each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_event_data import write_nmnist  # noqa: E402


def main() -> None:
    root = Path(tempfile.mkdtemp())
    write_nmnist(root / "data", per_class=13, test_per_class=1)
    for steps in (50, 100, 200, 400):
        for chunk in (None, 10):
            cfg = {"name": "chunk", "device": "cpu", "threads": 2,
                   "data": {"dataset": "nmnist", "root": str(root / "data"), "val_size": 2},
                   "model": {"layers": [{"conv": 8, "kernel": 5, "pool": 2}, {"linear": 32}]},
                   "encoding": {"kind": "events", "time_steps": steps},
                   "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 16, "time_chunk": chunk}}
            path = root / "config.yaml"
            path.write_text(yaml.safe_dump(cfg))
            out = subprocess.run([sys.executable, "-m", "snnrun", "train", str(path), "--out", str(root / "out")],
                                 capture_output=True, text=True, check=True)
            summary = json.loads((Path(out.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
            print(f"T={steps:4d} time_chunk={chunk}: peak {summary['peak_memory_mb']:.0f} MiB, "
                  f"{summary['train_seconds']:.2f} s for 128 recordings", flush=True)


if __name__ == "__main__":
    main()
