"""Every fault snnrun survives, one test each: read this file to see what we promise.

- A training process killed with SIGKILL during a batch, inside a checkpoint write, or while plotting leaves
  a run that `--resume` finishes with the same weights and metrics as a run never interrupted.
- A run folder is never overwritten or mixed: same-second runs get their own folders, a finished run is not
  resumed, a run whose config.yaml was edited since its checkpoint is not resumed without --force.
- Bad input — random YAML documents, random --set keys and values, random bytes as a checkpoint — ends in a
  one-line error with exit code 2 (or in a valid run), never in a traceback or a half-written run folder.
- Resource faults: an output folder that cannot be written, a full disk, a CUDA device that is not there.
(Numerics: finite surrogate gradients for any membrane, and a NaN loss stopping the run with the last good
checkpoint, are in test_training.py; several processes in test_distributed.py.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from snnrun import runs, training
from snnrun.cli import app
from snnrun.config import load_yaml
from snnrun.data import available

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
runner = CliRunner()
pytestmark = pytest.mark.skipif(not available(ROOT / "data"), reason="MNIST not prepared: run `make data`")

# tmp_path is shared by a test's examples (each makes its own folder), and a loaded machine draws examples slowly
NOT_CHECKED = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

# smoke, made three epochs long so that there are checkpoints to fall back on
THREE_EPOCHS = ["--device", "cpu", "--set", "train.epochs=3", "--set", "model.hidden=[64]"]


def train_args(out: Path) -> list[str]:
    return ["train", "configs/smoke.yaml", "--out", str(out), *THREE_EPOCHS]


def snnrun(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snnrun", *args], capture_output=True, text=True, cwd=ROOT,
                          env=ENV, timeout=900)  # only against a hang


def finished(result: subprocess.CompletedProcess) -> Path:
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def outcome(folder: Path) -> tuple[dict, dict]:
    """(summary, final weights) of a finished run."""
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("train_seconds"), summary.pop("peak_memory_mb")  # measured, not computed
    weights = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["model"]
    return summary, weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, dict]:
    return outcome(finished(snnrun(*train_args(tmp_path_factory.mktemp("whole")))))


def kill_then_resume(out: Path, hold, point: str) -> Path:
    """Train into out, held at `point` (see tests/hold/sitecustomize.py); SIGKILL it there; its run folder."""
    proc = subprocess.Popen([sys.executable, "-m", "snnrun", *train_args(out)], cwd=ROOT, env=hold.env(point, ENV),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hold.wait(proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=900)
    assert proc.returncode == -signal.SIGKILL
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def assert_resumes_like_uninterrupted(folder: Path, uninterrupted) -> None:
    assert not (folder / "summary.json").exists()
    saved = torch.load(folder / "checkpoints" / "last.pt", weights_only=True)  # complete, never torn
    assert saved["epoch"] >= 1
    resumed = finished(snnrun("train", "--resume", str(folder)))
    assert resumed == folder
    summary, weights = outcome(folder)
    expected_summary, expected_weights = uninterrupted
    assert summary == expected_summary
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)
    assert [json.loads(line)["epoch"] for line in (folder / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert {"curves.png", "raster.png", "metrics.csv"} <= {p.name for p in folder.iterdir()}


# --------------------------------------------------------------------------- SIGKILL at any moment


def test_sigkill_during_a_batch(tmp_path, hold, uninterrupted):
    # killed in the tenth batch of epoch 2: after its forward pass, before its weights are updated
    folder = kill_then_resume(tmp_path / "out", hold, "batch:1:10")
    assert_resumes_like_uninterrupted(folder, uninterrupted)


def test_sigkill_inside_a_checkpoint_write(tmp_path, hold, uninterrupted):
    folder = kill_then_resume(tmp_path / "out", hold, "checkpoint-write:2")
    torn = folder / "checkpoints" / ".last.pt.tmp"
    assert torn.exists()  # half a checkpoint on disk, under its temporary name ...
    with pytest.raises(Exception):  # noqa: B017 (torch raises several types for a torn file)
        torch.load(torn, weights_only=True)
    assert torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1  # ... the last is whole
    assert_resumes_like_uninterrupted(folder, uninterrupted)
    assert not torn.exists()


def test_sigkill_while_plotting(tmp_path, hold, uninterrupted):
    folder = kill_then_resume(tmp_path / "out", hold, "plotting")
    assert (folder / "curves.png").exists() and not (folder / "raster.png").exists()
    assert_resumes_like_uninterrupted(folder, uninterrupted)


# --------------------------------------------------------------------------- run folders


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path):
    import datetime as dt

    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    folders = {runs.claim_run_dir(tmp_path, "mnist", now) for _ in range(3)}
    assert len(folders) == 3 and all(f.is_dir() and not any(f.iterdir()) for f in folders)


def test_a_finished_run_is_never_resumed(tmp_path):
    folder = finished(snnrun("train", "configs/smoke.yaml", "--device", "cpu", "--out", str(tmp_path)))
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    result = snnrun("train", "--resume", str(folder))
    assert result.returncode == 2 and "finished run is never overwritten" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before


def interrupted_run(out: Path) -> Path:
    """A run stopped by Ctrl-C after its first epoch (in-process, through the CLI's own stop flag)."""
    import snnrun.cli as cli

    calls = []

    def stop_after_first_epoch(self):
        calls.append(1)
        return len(calls) > 50  # the smoke config has 47 batches an epoch

    original = cli.StopFlag.is_set
    cli.StopFlag.is_set = stop_after_first_epoch
    try:
        result = runner.invoke(app, ["train", str(ROOT / "configs/smoke.yaml"), "--out", str(out),
                                     "--set", f"data.root={ROOT / 'data'}", *THREE_EPOCHS])
    finally:
        cli.StopFlag.is_set = original
    assert result.exit_code == 130, result.output
    (folder,) = out.iterdir()
    return folder


def test_resume_refuses_an_edited_config_unless_forced(tmp_path):
    folder = interrupted_run(tmp_path)
    config = folder / "config.yaml"
    data = yaml.safe_load(config.read_text())
    data["train"]["lr"] = 0.01
    data["train"]["epochs"] = 4
    config.write_text(yaml.safe_dump(data))
    refused = runner.invoke(app, ["train", "--resume", str(folder)])
    assert refused.exit_code == 2
    assert "train.lr: 0.002 -> 0.01" in refused.output and "train.epochs: 3 -> 4" in refused.output
    assert "--force" in refused.output
    assert not (folder / "summary.json").exists()
    forced = runner.invoke(app, ["train", "--resume", str(folder), "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((folder / "summary.json").read_text())["epochs"] == 4


# --------------------------------------------------------------------------- bad input never gives a traceback


def assert_clean_failure_or_run(result, out: Path, finished_file: str = "summary.json",
                                names: tuple[str, ...] = ()) -> None:
    """Exit 2 with one `error:` line (naming one of `names`: the file or option at fault) and no run folder,
    or a finished run; never a traceback."""
    text = result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), text
    assert "Traceback" not in text
    if result.exit_code == 0:
        folders = [p for p in out.iterdir() if not p.name.startswith(".")] if out.exists() else []
        assert len(folders) == 1 and (folders[0] / finished_file).exists(), text
        return
    diverged = result.exit_code == 1 and "the loss became" in text  # a valid config can still diverge
    assert result.exit_code == 2 or diverged, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    if result.exit_code == 2:
        assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")], text
        assert not names or any(name in errors[0] for name in names), text


SMOKE = load_yaml(ROOT / "configs" / "smoke.yaml")
KEYS = ["name", "device", "threads", "data", "data.val_size", "data.root", "model", "model.hidden", "model.neuron",
        "model.neuron.beta", "model.neuron.model", "model.neuron.threshold", "model.neuron.reset",
        "model.surrogate.kind", "model.surrogate.slope", "model.readout", "model.output", "model.dropout",
        "encoding", "encoding.kind", "encoding.time_steps", "encoding.gain", "train", "train.lr", "train.loss",
        "train.batch_size", "train.optimizer", "train.schedule", "train.seed", "train.subset", "train.epochs",
        "model.hidden.0", "nonsense", "train.nonsense", "model.neuron.tau"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(["", "adam", "rate", "leaky", "zero", "cpu", "auto", "cuda", "1e-3", "[1,2]"]),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6),
                                                                                             inner, max_size=3),
                      max_leaves=6)


def mutate(doc: dict, key: str, value):
    doc = json.loads(json.dumps(doc))
    *parents, last = key.split(".")
    node = doc
    for part in parents:
        if not isinstance(node, dict) or not isinstance(node.get(part), dict | list):
            return doc
        node = node[part] if isinstance(node, dict) else node
    if isinstance(node, dict):
        node[last] = value
    return doc


TINY = ["--set", "train.epochs=1", "--set", "train.subset.train=96", "--set", "train.subset.test=32",
        "--set", "data.val_size=64", "--set", f"data.root={ROOT / 'data'}"]


@settings(max_examples=40, deadline=None, suppress_health_check=NOT_CHECKED)
@given(document=st.one_of(
    st.tuples(st.sampled_from(KEYS), values).map(lambda kv: mutate(SMOKE, *kv)),
    values,
    st.text(max_size=40)))
def test_random_yaml_documents(tmp_path, document):
    out = tmp_path / f"out{time.monotonic_ns()}"
    config = tmp_path / "config.yaml"
    config.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    result = runner.invoke(app, ["train", str(config), "--out", str(out), *TINY])
    assert_clean_failure_or_run(result, out, names=(str(config), "--set"))


STEP = load_yaml(ROOT / "configs" / "step.yaml")
SIMULATION_KEYS = ["name", "time_steps", "neurons", "device", "record_neurons", "neuron", "neuron.model",
                   "neuron.beta", "neuron.tau", "neuron.dt", "neuron.threshold", "neuron.reset",
                   "neuron.initial_membrane", "neuron.refractory_ms", "stimulus", "stimulus.kind",
                   "stimulus.amplitude", "stimulus.onset", "stimulus.offset", "stimulus.values", "nonsense"]


@settings(max_examples=40, deadline=None, suppress_health_check=NOT_CHECKED)
@given(document=st.one_of(st.tuples(st.sampled_from(SIMULATION_KEYS), values).map(lambda kv: mutate(STEP, *kv)),
                          values, st.text(max_size=40)))
def test_random_yaml_documents_to_simulate(tmp_path, document):
    out = tmp_path / f"out{time.monotonic_ns()}"
    config = tmp_path / "sim.yaml"
    config.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    result = runner.invoke(app, ["simulate", str(config), "--out", str(out)])
    assert_clean_failure_or_run(result, out, finished_file="metrics.json", names=(str(config),))


@settings(max_examples=40, deadline=None, suppress_health_check=NOT_CHECKED)
@example(key="--", value="")  # a key that looks like an option: once named without its --set
@example(key="model.hidden", value="[null]")  # the error is at model.hidden[0].size: once blamed on the file
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), value=st.one_of(
    values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()), st.text(max_size=12)))
def test_random_set_keys_and_values(tmp_path, key, value):
    out = tmp_path / f"out{time.monotonic_ns()}"
    result = runner.invoke(app, ["train", str(ROOT / "configs" / "smoke.yaml"), "--out", str(out), "--set",
                                 f"{key}={value}", *TINY])
    assert_clean_failure_or_run(result, out, names=("--set",))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    return finished(snnrun("train", "configs/smoke.yaml", "--device", "cpu", "--out", str(out),
                           "--set", "train.subset.train=200", "--set", "train.subset.test=50"))


@settings(max_examples=30, deadline=None, suppress_health_check=NOT_CHECKED)
@given(junk=st.one_of(st.binary(max_size=300), st.binary(min_size=1, max_size=64).map(lambda b: b"PK\x03\x04" + b)))
def test_random_bytes_as_a_checkpoint(tmp_path, finished_run, junk):
    bad = tmp_path / "checkpoints" / "bad.pt"
    bad.parent.mkdir(exist_ok=True)
    bad.write_bytes(junk)
    shutil.copy(finished_run / "config.yaml", tmp_path / "config.yaml")
    result = runner.invoke(app, ["eval", str(bad)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")]
    assert not (tmp_path / "eval").exists() or not any((tmp_path / "eval").iterdir())


def test_random_bytes_as_the_checkpoint_to_resume(tmp_path):
    folder = interrupted_run(tmp_path)
    last = folder / "checkpoints" / "last.pt"
    for junk in (b"", b"\x80\x04garbage", os.urandom(2000), last.read_bytes()[:1000]):
        last.write_bytes(junk)
        result = runner.invoke(app, ["train", "--resume", str(folder)])
        assert result.exit_code == 2 and "not a snnrun checkpoint" in result.output, result.output
        assert "Traceback" not in result.output


# --------------------------------------------------------------------------- resources


@contextlib.contextmanager
def read_only(folder: Path):
    """Make folder unwritable for this process: chmod for a normal user; root ignores permissions, so for root
    the folder is made immutable (chattr +i, as on ext4), or the test is skipped where that is not possible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without chattr +i: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_output_folder_that_cannot_be_written(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        for command in (["train", "configs/smoke.yaml", "--device", "cpu"], ["simulate", "--current", "step"],
                        ["train", "configs/smoke.yaml", "--device", "cpu", "--out", str(locked)]):
            out = [] if "--out" in command else ["--out", str(locked / "runs")]
            result = snnrun(*command, *out)
            assert result.returncode == 2, result.stderr
            assert "cannot write here" in result.stderr and "Traceback" not in result.stderr
            assert not any(locked.iterdir())


def test_a_full_disk_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """The disk fills up during the second epoch's checkpoint: a clear error, the first epoch's checkpoint
    whole, no temporary file left; once there is space again, --resume finishes the run."""
    real_save, writes = torch.save, []

    def full_disk(obj, f, *rest, **options):
        if str(getattr(f, "name", "")).endswith(".last.pt.tmp"):
            writes.append(1)
            if len(writes) == 2:
                f.write(b"x" * 100)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *rest, **options)

    monkeypatch.setattr(training.torch, "save", full_disk)
    result = runner.invoke(app, ["train", str(ROOT / "configs/smoke.yaml"), "--out", str(tmp_path),
                                 "--set", f"data.root={ROOT / 'data'}", *THREE_EPOCHS])
    assert result.exit_code == 2 and "No space left on device" in result.output, result.output
    (folder,) = tmp_path.iterdir()
    checkpoints = folder / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.pt", "last.pt"]
    assert torch.load(checkpoints / "last.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(training.torch, "save", real_save)
    resumed = runner.invoke(app, ["train", "--resume", str(folder)])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((folder / "summary.json").read_text())["epochs"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_asked_for_on_a_machine_without_one(tmp_path):
    for command in (["train", "configs/smoke.yaml"], ["simulate"]):
        result = runner.invoke(app, [*command, "--device", "cuda", "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and "no CUDA device" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_a_full_disk_at_the_start_is_an_error_before_any_work(tmp_path, monkeypatch):
    class FullDisk:
        def __init__(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(runs.tempfile, "TemporaryFile", FullDisk)
    monkeypatch.setattr(training, "load_splits", lambda *a: pytest.fail("work started on a full disk"))
    result = runner.invoke(app, ["train", str(ROOT / "configs/smoke.yaml"), "--out", str(tmp_path / "out"),
                                 "--set", f"data.root={ROOT / 'data'}", "--device", "cpu"])
    assert result.exit_code == 2 and "cannot write here (No space left on device)" in result.output, result.output
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("kind", ["fast_sigmoid", "atan", "sigmoid", "straight_through"])
@pytest.mark.parametrize("model", ["leaky", "synaptic"])
def test_gradients_stay_finite_for_membranes_of_any_size(kind, model):
    """Currents of +-1e30 drive membranes to the edge of float32; every gradient stays finite."""
    from snnrun.neurons.sequence import run_sequence

    current = torch.tensor([1e30, -1e30, 1.0, 0.0, 1e-3], dtype=torch.float32).repeat(6, 1).requires_grad_()
    spikes, membrane = run_sequence(current, model, torch.tensor(0.9), 0.8, 1.0, "subtract", kind, 25.0)
    (spikes.sum() + 0 * membrane.sum()).backward()
    assert torch.isfinite(current.grad).all()
