"""Start-up cost, run-folder permissions, and simulate sweeps whose members share worker processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.runs import StagedRun

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
runner = CliRunner()

TINY = """\
name: tiny
time_steps: 50
neurons: 1
device: cpu
"""

# Loaded after the command ran: what `snnrun ARGS` imported (printed on stderr as one line).
IMPORTED = """\
import sys
sys.argv = ["snnrun", *sys.argv[1:]]
from snnrun.cli import main
try:
    main()
except SystemExit:
    pass
sys.stderr.write("\\nIMPORTED " + " ".join(sorted(sys.modules)) + "\\n")
"""


def imported(*args: str, cwd: Path = ROOT) -> set[str]:
    result = subprocess.run([sys.executable, "-c", IMPORTED, *args], capture_output=True, text=True, env=ENV,
                            cwd=cwd, timeout=600)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("IMPORTED "), result.stderr[-3000:]
    return set(line.split()[1:])


def top_level(modules: set[str]) -> set[str]:
    return {name.partition(".")[0] for name in modules}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["simulate", "--help"]])
def test_help_and_version_import_neither_torch_nor_numpy_nor_matplotlib(args):
    modules = imported(*args)
    heavy = {"torch", "numpy", "matplotlib", "torchvision", "scipy", "PIL", "numba", "llvmlite"}
    assert not top_level(modules) & heavy
    assert not {"rich.progress", "snnrun.commands", "snnrun.data"} & modules


def test_default_simulate_imports_no_torchvision_tensorboard_nir_or_scipy(in_tmp):
    modules = imported("simulate", "--out", str(in_tmp / "out"), cwd=in_tmp)
    assert {"torch", "matplotlib"} <= top_level(modules)  # (the run did happen)
    unused = {"torchvision", "tensorboard", "nir", "nirtorch", "scipy", "sympy", "numba", "llvmlite"}
    assert not top_level(modules) & unused  # numba: small work stays on the torch engine
    assert "torch._dynamo" not in modules  # (torchvision's import pulled it in: 2 s)
    folder = next((in_tmp / "out").iterdir())
    versions = json.loads((folder / "env.json").read_text())["versions"]
    assert {"torch", "numpy", "torchvision", "matplotlib", "typer", "yaml", "rich"} <= set(versions)
    assert "unknown" not in versions.values()


# --------------------------------------------------------------------------- permissions


@pytest.fixture
def umask():
    """Set the process's umask for a test, and restore it after."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_staged_run_folders_get_the_permissions_of_the_umask_as_mkdir_gives(tmp_path, umask, mask):
    umask(mask)
    with StagedRun(tmp_path / "out", "run") as run:
        (run.path / "file.txt").write_text("x")
    with StagedRun(tmp_path / "out", "member", into=tmp_path / "sweep" / "000_member") as member:
        pass
    (tmp_path / "by_mkdir").mkdir()
    expected = mode(tmp_path / "by_mkdir")
    assert expected == 0o777 & ~mask
    assert mode(run.final) == expected and mode(member.final) == expected
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".staging")]


def test_simulate_run_folder_is_readable_by_others_under_umask_022(tmp_path, umask):
    (tmp_path / "tiny.yaml").write_text(TINY)
    umask(0o022)
    result = runner.invoke(app, ["simulate", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    assert mode(folder) == 0o755  # was 0o700 (drwx------): staged with tempfile.mkdtemp
    assert all(mode(p) == 0o644 for p in folder.iterdir())


# --------------------------------------------------------------------------- simulate sweeps in workers


# Test-only, switched on by environment variables in the processes a test starts: SNNRUN_TEST_STARTS names a file
# that gets a line per Python process started; with SNNRUN_TEST_FAULTS a member with beta 0.4 meets a config
# error when it runs, one with beta 0.6 raises, and one with beta 0.7 kills its own process outright; with
# SNNRUN_TEST_HOLD_BETA the member with that beta creates the file SNNRUN_TEST_HOLD_MARKER and waits there until
# it is interrupted (so a test signals a sweep at a known point instead of racing it).
SITE = """\
import os, signal, sys, time
if os.environ.get("SNNRUN_TEST_HOLD_BETA"):
    from snnrun import commands
    held = commands.run_simulation
    def run_simulation(cfg, *args, **kwargs):
        if cfg.neuron.beta == float(os.environ["SNNRUN_TEST_HOLD_BETA"]):
            open(os.environ["SNNRUN_TEST_HOLD_MARKER"], "a").close()
            give_up = time.monotonic() + 600
            while time.monotonic() < give_up:  # until Ctrl-C (KeyboardInterrupt) ends the wait
                time.sleep(0.01)
            os._exit(3)
        return held(cfg, *args, **kwargs)
    commands.run_simulation = run_simulation
if os.environ.get("SNNRUN_TEST_STARTS"):
    with open(os.environ["SNNRUN_TEST_STARTS"], "a") as starts:
        starts.write(f"{os.getpid()} {' '.join(sys.orig_argv)}\\n")
if os.environ.get("SNNRUN_TEST_FAULTS"):
    from snnrun import commands
    real = commands.run_simulation
    def run_simulation(cfg, *args, **kwargs):
        if cfg.neuron.beta == 0.4:
            from snnrun.config import ConfigError
            raise ConfigError("an injected config error", source="test", key="neuron.beta")
        if cfg.neuron.beta == 0.6:
            raise RuntimeError("an injected failure")
        if cfg.neuron.beta == 0.7:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(cfg, *args, **kwargs)
    commands.run_simulation = run_simulation
"""


def site_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE)
    return {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, (str(site), ENV.get("PYTHONPATH")))), **variables}


def sweep(tmp_path: Path, values: str, *extra: str) -> list[str]:
    (tmp_path / "tiny.yaml").write_text(TINY)
    return [sys.executable, "-m", "snnrun", "sweep", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out"),
            "--grid", f"neuron.beta={values}", *extra]


def started(starts: Path) -> list[tuple[int, str]]:
    """(pid, command line) of each Python process started, from the SNNRUN_TEST_STARTS file."""
    lines = starts.read_text().splitlines() if starts.exists() else []
    return [(int(pid), command) for pid, _, command in (line.partition(" ") for line in lines)]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_simulate_sweep_runs_members_in_parallel_workers_not_a_process_each(tmp_path):
    starts = tmp_path / "starts.txt"
    betas = (0.5, 0.8, 0.9, 0.95, 0.97)
    result = subprocess.run(sweep(tmp_path, f"[{', '.join(map(str, betas))}]", "--parallel", "2"),
                            capture_output=True, text=True, env=site_env(tmp_path, SNNRUN_TEST_STARTS=str(starts)),
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = Path(result.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 5
    members = [folder / r["member"] for r in rows]
    # five simulations, but two worker processes besides the sweep itself (a process each made six)
    commands = [command for _, command in started(starts)]
    assert len(commands) == 3 and sum("snnrun.worker import serve" in c for c in commands) == 2, commands
    # each member a complete simulate run, written as `snnrun simulate base.yaml --set ... --into` writes it
    for member, beta in zip(members, betas, strict=True):
        assert {p.name for p in member.iterdir()} >= {"config.yaml", "env.json", "traces.npz", "metrics.json",
                                                     "current_membrane_spikes.png", "run.log"}
        assert f"beta: {beta}" in (member / "config.yaml").read_text()
        env = json.loads((member / "env.json").read_text())
        assert env["command_line"][:3] == ["__main__.py", "simulate", str(folder / "base.yaml")]
        assert env["command_line"][-2:] == ["--into", str(member)]
        assert env["threads"] == max(1, (os.cpu_count() or 1) // 2)
    logs = sorted((folder / "logs").iterdir())
    assert [log.name for log in logs] == [f"{i:03d}.log" for i in range(5)]
    for log, member in zip(logs, members, strict=True):  # each log holds its own member's output alone
        assert log.read_text().strip().splitlines()[-1] == str(member)
        assert sum(str(other) in log.read_text() for other in members) == 1


def test_a_failing_simulate_member_is_reported_failed_and_the_others_still_run(tmp_path):
    result = subprocess.run(sweep(tmp_path, "[0.5, 0.6, 0.7, 0.8, 0.4]"), capture_output=True, text=True,
                            env=site_env(tmp_path, SNNRUN_TEST_FAULTS="1"), timeout=900)
    assert result.returncode == 1, result.stderr[-3000:]
    folder = Path(result.stdout.strip().splitlines()[-1])
    status = {r["member"][:3]: r["status"] for r in csv.DictReader((folder / "sweep.csv").open())}
    assert status == {"000": "done", "001": "failed", "002": "failed", "003": "done", "004": "error"}
    assert "RuntimeError: an injected failure" in (folder / "logs" / "001.log").read_text()
    assert "error: test: neuron.beta: an injected config error" in (folder / "logs" / "004.log").read_text()
    said = " ".join(result.stderr.split())
    assert "member 001_beta=0.6 exited with 1" in said and "member 002_beta=0.7 exited with -9" in said
    assert "member 004_beta=0.4 exited with 2" in said
    assert not any((folder / name).exists() for name in ("001_beta=0.6", "002_beta=0.7", "004_beta=0.4"))
    assert not [p for p in folder.iterdir() if p.name.startswith(".staging")]


def test_ctrl_c_stops_a_simulate_sweep_and_its_workers_and_resume_finishes_it(tmp_path):
    starts = tmp_path / "starts.txt"
    values = "[" + ", ".join(f"{0.5 + 0.01 * i:.2f}" for i in range(12)) + "]"
    marker = tmp_path / "held"
    proc = subprocess.Popen(sweep(tmp_path, values, "--parallel", "2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=site_env(tmp_path, SNNRUN_TEST_STARTS=str(starts), SNNRUN_TEST_HOLD_BETA="0.54",
                                         SNNRUN_TEST_HOLD_MARKER=str(marker)))
    give_up = time.monotonic() + 900  # only against a hang: member 004 (beta 0.54) holds until interrupted
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < give_up
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C while member 004 runs, at least three members done
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "snnrun sweep --resume" in stderr and "Traceback" not in stderr
    folder = Path(stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    done = [r for r in rows if r["status"] == "done"]
    assert 3 <= len(done) < 12 and {r["status"] for r in rows} <= {"done", "interrupted", "not run"}
    assert next(r["status"] for r in rows if r["member"].startswith("004_")) == "interrupted"
    assert all((folder / r["member"] / "metrics.json").is_file() for r in done)
    assert not [p for p in folder.iterdir() if p.name.startswith(".staging")]
    workers = [pid for pid, command in started(starts) if "snnrun.worker import serve" in command]
    assert len(workers) == 2 and all(gone(pid) for pid in workers)  # stopped with the sweep, none left behind

    again = subprocess.run([sys.executable, "-m", "snnrun", "sweep", "--resume", str(folder)], capture_output=True,
                           text=True, env=ENV, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before") == len(done)
    assert [r["status"] for r in csv.DictReader((folder / "sweep.csv").open())] == ["done"] * 12


def test_worker_runs_members_given_on_stdin_and_reports_each_exit_code(tmp_path):
    """The worker alone: one JSON line in per member, its exit code out; a bad value is an error (2), in its log."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    jobs = [{"args": ["simulate", str(tmp_path / "tiny.yaml"), "--set", f"neuron.beta={beta}", "--into",
                      str(tmp_path / name)], "log": str(tmp_path / f"{name}.log")}
            for beta, name in ((0.9, "a"), (2, "b"), (0.8, "c"))]
    result = subprocess.run([sys.executable, "-c", "from snnrun.worker import serve; serve()"], env=ENV,
                            input="".join(json.dumps(job) + "\n" for job in jobs), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and result.stdout.split() == ["0", "2", "0"], result
    assert (tmp_path / "a" / "metrics.json").is_file() and (tmp_path / "c" / "metrics.json").is_file()
    assert not (tmp_path / "b").exists()
    assert "error:" in (tmp_path / "b.log").read_text() and "neuron.beta" in (tmp_path / "b.log").read_text()
    assert (tmp_path / "a.log").read_text().strip().splitlines()[-1] == str(tmp_path / "a")
