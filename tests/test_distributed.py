"""Training on two gloo processes on the CPU: the same weights on both ranks, the single-process accuracy, one
run folder, Ctrl-C and a crashed rank bring every rank down with a checkpoint kept, and a run saved with two
processes resumes with one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snnrun import distributed
from snnrun.distributed import Ranks

ROOT = Path(__file__).resolve().parent.parent
SMOKE = str(ROOT / "configs" / "smoke.yaml")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on a 2-core machine: one thread each


def snnrun(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:  # timeouts only guard against hangs
    return subprocess.run([sys.executable, "-m", "snnrun", *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=timeout)


def run_folder(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_shards_cover_the_batch_and_weight_the_mean(batch):
    """The ranks' parts are the global batch in order, and their weighted means average to the global mean
    (what DDP's gradient averaging then reproduces exactly)."""
    index = torch.arange(100, 100 + batch)
    values = torch.randn(200, dtype=torch.float64)
    parts, combined = [], 0.0
    for rank in range(3):
        part, share = distributed.shard(index, Ranks(rank, 3))
        if share > 0:
            parts.append(part)
        combined += share * float(values[part].mean()) / 3
    assert torch.equal(torch.cat(parts), index)
    assert combined == pytest.approx(float(values[index].mean()), rel=1e-12)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single")
    folder = run_folder(snnrun("train", SMOKE, "--device", "cpu", "--out", str(out)))
    return json.loads((folder / "summary.json").read_text())


def test_two_processes_train_like_one(tmp_path, single_run):
    result = snnrun("train", SMOKE, "--nproc", "2", "--device", "cpu", "--out", str(tmp_path))
    folder = run_folder(result)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # rank 0 alone writes, one run folder
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["processes"] == 2
    digests = summary["weights_sha256"]  # computed on each rank from its own replica
    assert len(digests) == 2 and digests[0] == digests[1]
    assert abs(summary["test_accuracy"] - single_run["test_accuracy"]) <= 0.01
    assert "x 2 processes" in (folder / "run.log").read_text()
    assert result.stdout.count("test accuracy") == 1  # one table: the other rank is quiet
    evaluated = snnrun("eval", str(folder))  # the checkpoint holds the plain model: one process reads it
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]


def test_torchrun_itself_starts_the_same_training(tmp_path):
    """The documented `torchrun --nproc_per_node=2 -m snnrun train ...` (torchrun's own command line)."""
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "snnrun", "train", SMOKE, "--device", "cpu", "--out", str(tmp_path),
                             "--set", "train.subset.train=640"], capture_output=True, text=True, cwd=ROOT, env=ENV,
                            timeout=900)
    summary = json.loads((run_folder(result) / "summary.json").read_text())
    assert summary["processes"] == 2 and len(set(summary["weights_sha256"])) == 1


def _workers(launcher: int) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if ppid == launcher:
            ranks = [int(v[5:]) for v in env if v.startswith(b"RANK=")]
            if ranks:
                out[ranks[0]] = int(entry.name)
    return out


def _gone(pids) -> bool:
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            return False
    return True


def _start(out: Path, epochs: int, hold) -> tuple[subprocess.Popen, Path]:
    """`train --nproc 2`, rank 0 held just after writing its first last.pt (the end of epoch 1) until its stop
    flag is set (rank 1 then waits for it in the next batch); (the launcher, that last.pt)."""
    proc = subprocess.Popen([sys.executable, "-m", "snnrun", "train", SMOKE, "--nproc", "2", "--device", "cpu",
                             "--out", str(out), "--set", f"train.epochs={epochs}"], cwd=ROOT,
                            env=hold.env("checkpoint:1", ENV), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    hold.wait(proc)
    (last,) = out.glob("*/checkpoints/last.pt")
    return proc, last


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_ctrl_c_stops_every_rank_and_one_process_resumes(tmp_path, hold):
    proc, last = _start(tmp_path / "out", epochs=4, hold=hold)
    workers = _workers(proc.pid)
    assert sorted(workers) == [0, 1]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the launcher and every rank
    _, stderr = proc.communicate(timeout=900)  # (only against a hang)
    assert proc.returncode == 130, stderr[-3000:]
    assert _gone(workers.values())  # no rank left behind
    assert "Traceback" not in stderr
    saved = torch.load(last, weights_only=True)
    assert saved["processes"] == 2 and saved["epoch"] < 4
    assert not (last.parent.parent / "summary.json").exists()

    folder = run_folder(snnrun("train", "--resume", str(last.parent.parent)))  # now with one process
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["processes"] == 1 and summary["epochs"] == 4
    assert summary["test_accuracy"] > 0.8


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_a_crashed_rank_brings_the_others_down(tmp_path, hold):
    proc, last = _start(tmp_path / "out", epochs=4, hold=hold)
    workers = _workers(proc.pid)
    os.kill(workers[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=900)  # (only against a hang)
    assert proc.returncode not in (0, 130), stderr[-3000:]
    assert _gone(workers.values())
    assert "process 1 of 2 was killed by signal 9" in stderr
    assert torch.load(last, weights_only=True)["epoch"] >= 1  # the last checkpoint is intact
