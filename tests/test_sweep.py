"""`snnrun sweep`: planning (grid, seeded random draws, member names), bad input, and whole sweeps of child runs
that can be stopped and continued."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snnrun import sweep
from snnrun.cli import app
from snnrun.data import available

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
runner = CliRunner()

# a small simulate config: 3 LIF neurons (0.5, 2 and 4 nA steps), 100 ms
TINY_SIMULATION = """\
name: tiny
time_steps: 1000
neurons: 3
neuron: {model: lif, tau_ms: 10.0, v_thresh_mv: -50.0, refractory_ms: 2.0, r_mohm: 10.0, dt_ms: 0.1}
stimulus: {kind: step, amplitude: [0.5, 2.0, 4.0], onset: 0}
device: cpu
"""


def test_grid_runs_every_combination_first_key_slowest():
    axes = [sweep.parse_axis("encoding.time_steps=[4, 8]"), sweep.parse_axis("model.hidden=[[64], [128, 32]]")]
    members = sweep.expand(axes)
    assert [m.values for m in members] == [
        {"encoding.time_steps": 4, "model.hidden": [64]}, {"encoding.time_steps": 4, "model.hidden": [128, 32]},
        {"encoding.time_steps": 8, "model.hidden": [64]}, {"encoding.time_steps": 8, "model.hidden": [128, 32]}]
    assert [m.name for m in members] == ["000_time_steps=4_hidden=64", "001_time_steps=4_hidden=128-32",
                                         "002_time_steps=8_hidden=64", "003_time_steps=8_hidden=128-32"]
    assert members[1].overrides == ["encoding.time_steps=4", "model.hidden=[128, 32]"]


def test_same_last_key_part_keeps_the_whole_key_in_names():
    axes = [sweep.parse_axis("model.neuron.beta=[0.9]"), sweep.parse_axis("model.output.beta=[0.5]")]
    assert sweep.expand(axes)[0].name == "000_model.neuron.beta=0.9_model.output.beta=0.5"


def test_random_draws_are_seeded_and_stay_in_their_ranges():
    axes = [sweep.parse_axis("train.lr=1e-4:1e-2:log"), sweep.parse_axis("model.hidden=[[64], [256]]"),
            sweep.parse_axis("encoding.time_steps=2:32"), sweep.parse_axis("model.neuron.beta=0.5:0.99")]
    first, again, other = (sweep.expand(axes, 40, seed) for seed in (1, 1, 2))
    assert [m.values for m in first] == [m.values for m in again]
    assert [m.values for m in first] != [m.values for m in other]
    lrs = [m.values["train.lr"] for m in first]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert sum(lr < 1e-3 for lr in lrs) > 10  # log-uniform: about half below the geometric middle
    steps = [m.values["encoding.time_steps"] for m in first]
    assert all(isinstance(s, int) and 2 <= s <= 32 for s in steps)
    assert {tuple(m.values["model.hidden"]) for m in first} == {(64,), (256,)}
    assert all(0.5 <= m.values["model.neuron.beta"] <= 0.99 for m in first)


@pytest.mark.parametrize("args, message", [
    (["--grid", "neurons"], "is not KEY=[v1,v2,...]"),
    (["--grid", "neurons=3"], "expected a list of values"),
    (["--grid", "neuron.tau_ms=1:10"], "a range needs random draws"),
    (["--grid", "neuron.tau_ms=10:1", "--random", "2"], "low < high"),
    (["--grid", "neuron.tau_ms=[10, -1]"], "sweep member 001_tau_ms=-1"),
    (["--grid", "neuron.tau=[10]"], "unknown key"),
    (["--grid", "neurons=[2]", "--command", "fit"], "'fit' is not allowed"),
    (["--grid", "neurons=[2]", "--set", "time_steps=0"], "--set time_steps=0"),
    (["--range", "neurons"], "--range: 'neurons' is not KEY=[v1,v2,...] or KEY=LOW:HIGH[:log]"),
    (["--range", "neuron.tau_ms=5:"], "expected a list of values [v1, v2, ...] or a range"),
    (["--search", "bayes", "--range", "neuron.tau_ms=1:10"], "--search: 'bayes' is not allowed; expected one of "
                                                              "grid, random, tpe"),
    (["--search", "tpe", "--range", "neuron.tau_ms=1:10"], "search tpe needs the number of members: --trials N"),
    (["--search", "tpe", "--trials", "2", "--range", "neuron.tau_ms=-5:10"], "sweep member neuron.tau_ms=-5"),
    (["--grid", "neurons=[3]", "--trials", "3"], "--trials: a grid runs every combination"),
    (["--grid", "neurons=[3]", "--random", "2", "--search", "tpe"], "--random: --random N draws members at random"),
    (["--grid", "neurons=[3]", "--pruner", "median"], "a simulate sweep has none"),
    (["--grid", "neurons=[3]", "--pruner", "early"], "--pruner: 'early' is not allowed; expected one of none, "
                                                     "median, halving"),
    (["--grid", "neurons=[3]", "--prune-after", "2"], "--prune-after is the median pruner's"),
    (["--grid", "neurons=[3]", "--maximize", "x", "--metric", "y"], "--maximize: --maximize METRIC names the metric"),
    (["--grid", "neurons=[3]", "--maximize", "x", "--minimize", "y"], "give one of --maximize METRIC and"),
    (["--grid", "neurons=[3]", "--storage", "nosuch://host/db"], "--storage: cannot open the study storage"),
    (["--grid", "neurons=[3]", "--resume", "somewhere"], "--resume: CONFIG and --resume do not go together"),
])
def test_bad_sweep_input_is_one_line_exit_2_and_no_folder(tmp_path, args, message):
    (tmp_path / "tiny.yaml").write_text(TINY_SIMULATION)
    result = runner.invoke(app, ["sweep", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_simulate_sweep_writes_members_csv_and_heat_map_and_resume_runs_nothing_again(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_SIMULATION + "sweep:\n  grid:\n    neuron.tau_ms: [5.0, 20.0]\n")
    result = subprocess.run([sys.executable, "-m", "snnrun", "sweep", str(config), "--out", str(tmp_path / "out"),
                             "--grid", "neuron.v_thresh_mv=[-55, -45]", "--parallel", "2"],
                            capture_output=True, text=True, env=ENV, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = Path(result.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [r["member"] for r in rows] == ["000_tau_ms=5_v_thresh_mv=-55", "001_tau_ms=5_v_thresh_mv=-45",
                                           "002_tau_ms=20_v_thresh_mv=-55", "003_tau_ms=20_v_thresh_mv=-45"]
    assert all(r["status"] == "done" for r in rows) and (folder / "sweep.png").is_file()
    rates = {(float(r["neuron.tau_ms"]), float(r["neuron.v_thresh_mv"])): float(r["mean_firing_rate"])
             for r in rows}
    # a lower threshold and a shorter time constant (faster charging to the same R*I) both fire more
    assert rates[5, -55] > rates[5, -45] and rates[5, -55] > rates[20, -55] > rates[20, -45]
    for r in rows:  # each member is a complete simulate run with its own values
        member = folder / r["member"]
        used = (member / "config.yaml").read_text()
        assert f"tau_ms: {float(r['neuron.tau_ms'])}" in used and (member / "fi_curve.png").is_file()
        metrics = json.loads((member / "metrics.json").read_text())
        assert math.isclose(metrics["population"]["mean_firing_rate"], float(r["mean_firing_rate"]))
    # the table ranks by the metric, best first
    table_lines = [line for line in result.stdout.splitlines() if line.startswith("│")]
    assert table_lines[0].split("│")[2].strip() == "000"

    kept = folder / rows[0]["member"] / "metrics.json"
    stamp = kept.stat().st_mtime_ns
    again = subprocess.run([sys.executable, "-m", "snnrun", "sweep", "--resume", str(folder)],
                           capture_output=True, text=True, env=ENV, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before") == 4 and "start " not in again.stderr  # the study knows they are done
    assert kept.stat().st_mtime_ns == stamp  # finished members are never run again
    assert list(csv.DictReader((folder / "sweep.csv").open())) == rows
    assert (folder / "study.db").is_file() and (folder / "optimization_history.png").is_file()


@pytest.mark.skipif(not available(ROOT / "data"), reason="MNIST not prepared: run `make data`")
def test_train_sweep_stopped_mid_member_resumes_that_member_from_its_checkpoint(tmp_path, hold):
    out = tmp_path / "out"
    start = [sys.executable, "-m", "snnrun", "sweep", "configs/smoke.yaml", "--out", str(out), "--device", "cpu",
             "--set", "train.epochs=3", "--set", "model.hidden=[32]", "--set", "train.subset.train=3000",
             "--grid", "train.seed=[0, 1]"]
    # the first member is held in the 5th batch of its epoch 2 (of 3) until the Ctrl-C reaches it
    proc = subprocess.Popen(start, cwd=ROOT, env=hold.env("batch:1:5", ENV), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    hold.wait(proc)
    assert list(out.glob("*/000_seed=0/checkpoints/last.pt"))  # held inside the first member
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the sweep asks its running member to stop after its batch
    stdout, stderr = proc.communicate(timeout=900)  # (timeouts here only guard against a hang)
    assert proc.returncode == 130, stderr[-3000:]
    folder = Path(stdout.strip().splitlines()[-1])
    member = folder / "000_seed=0"
    assert "snnrun sweep --resume" in stderr and "Traceback" not in stderr
    assert (member / "checkpoints" / "last.pt").is_file() and not (member / "summary.json").exists()
    assert not (folder / "001_seed=1").exists()

    result = subprocess.run([sys.executable, "-m", "snnrun", "sweep", "--resume", str(folder)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed on" in (member / "run.log").read_text()  # continued from its checkpoint, not started over
    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [r["status"] for r in rows] == ["done", "done"]
    assert all(float(r["test_accuracy"]) > 0.8 and r["epochs"] == "3" for r in rows)
    assert (folder / "sweep.png").is_file()


def test_into_writes_that_exact_folder_and_never_over_another_run(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_SIMULATION)
    target = tmp_path / "runs" / "mine"
    result = runner.invoke(app, ["simulate", str(tmp_path / "tiny.yaml"), "--into", str(target)])
    assert result.exit_code == 0, result.output
    assert (target / "metrics.json").is_file() and sorted(p.name for p in target.parent.iterdir()) == ["mine"]
    before = (target / "metrics.json").stat().st_mtime_ns
    again = runner.invoke(app, ["simulate", str(tmp_path / "tiny.yaml"), "--into", str(target)])
    assert again.exit_code == 2 and "not empty" in again.output
    assert (target / "metrics.json").stat().st_mtime_ns == before


@pytest.mark.parametrize("name", ["sweep_time_steps.yaml", "sweep_fi.yaml"])
def test_shipped_sweep_configs_plan_valid_members(name):
    from snnrun.commands import plan_sweep

    _, plan = plan_sweep(ROOT / "configs" / name, [], [], device="cpu")
    assert len(plan.members) == {"sweep_time_steps.yaml": 8, "sweep_fi.yaml": 16}[name]
    assert plan.command == {"sweep_time_steps.yaml": "train", "sweep_fi.yaml": "simulate"}[name]


# --------------------------------------------------------------------------- Optuna: studies, pruning, workers

# a smoke training small enough for sweeps of several members: 1,000 training and 500 validation images, 2 epochs
SMALL = ["configs/smoke.yaml", "--device", "cpu", "--set", "model.hidden=[32]", "--set", "train.epochs=2",
         "--set", "train.subset.train=1000", "--set", "train.subset.test=500", "--set", "data.val_size=500"]
needs_mnist = pytest.mark.skipif(not available(ROOT / "data"), reason="MNIST not prepared: run `make data`")


def snnrun_sweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "snnrun", "sweep", *args]


def study_of(url: str, folder: Path):
    import optuna

    return optuna.load_study(study_name=folder.name, storage=url)


def by_member(study) -> dict[str, list]:
    tries: dict[str, list] = {}
    for trial in sorted(study.get_trials(), key=lambda t: t.number):
        tries.setdefault(trial.user_attrs.get("member"), []).append(trial)
    return tries


@pytest.mark.parametrize("args, message", [
    (["--join", "a-study"], "--join STUDY needs --storage URL"),
    (["--join", "a-study", "--storage", "sqlite:///x.db", "--grid", "neurons=[3]"],
     "--grid: --join takes the plan from the study; leave out --grid"),
    (["--resume", "a-folder", "--device", "cpu"], "--device: --device does not go with --resume"),
    ([], "give a config file"),
])
def test_sweep_modes_that_do_not_go_together_are_one_line_exit_2(args, message):
    result = runner.invoke(app, ["sweep", *args])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output


def test_joining_a_study_that_is_not_there_names_the_studies_there(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY_SIMULATION)
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    made = runner.invoke(app, ["sweep", str(tmp_path / "tiny.yaml"), "--grid", "neuron.tau_ms=[5.0]", "--storage",
                               url, "--out", str(tmp_path / "out")])
    assert made.exit_code == 0, made.output
    name = next((tmp_path / "out").iterdir()).name
    result = runner.invoke(app, ["sweep", "--storage", url, "--join", "nosuch", "--out", str(tmp_path / "other")])
    assert result.exit_code == 2 and f"--join: no study 'nosuch' in this storage; there: {name}" in \
        " ".join(result.output.split()), result.output
    assert not (tmp_path / "other").exists()


def test_planned_members_are_queued_in_order_and_a_dead_local_worker_s_trial_is_queued_again(tmp_path):
    from snnrun import trials

    axes = [sweep.parse_axis("model.hidden=[[64], [128, 32]]"), sweep.parse_axis("train.lr=[0.001, 0.01]")]
    plan = sweep.Plan("train", "test_accuracy", "max", axes, sweep.expand(axes), study="s")
    storage = trials.open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=60)
    study = trials.create_study(storage, plan, {"name": "x"})
    assert trials.read_study(storage, "s")[0] == {"name": "x"}
    trial, trial_id = trials.take_trial(study, storage)
    member = trials.start_member(trial, plan, tmp_path)
    assert member == plan.members[0]  # the first queued member, its values fixed: [64] stored as YAML text
    assert trial.params == {"model.hidden": "[64]", "train.lr": 0.001}
    held, _ = trials.take_trial(study, storage)
    trials.start_member(held, plan, tmp_path)  # held by this (live) process
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("worker", f"{trials.WORKER_ID.rpartition(':')[0]}:{int(dead.stdout)}")
    assert trials.reclaim_lost(study, storage) == ["000_hidden=64_lr=0.001"]
    again, _ = trials.take_trial(study, storage)  # the retry comes before the members never started
    assert trials.start_member(again, plan, tmp_path) == member and again.number == 4
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "RUNNING", "WAITING", "WAITING", "RUNNING"]


@needs_mnist
def test_a_pruned_member_stops_before_its_last_epoch_and_its_folder_says_so(tmp_path, hold):
    out = tmp_path / "out"
    args = snnrun_sweep(*SMALL, "--set", "train.epochs=3", "--out", str(out), "--grid", "train.lr=[2e-3, 1e-9]",
                        "--pruner", "median", "--prune-after", "1", "--maximize", "val_accuracy")
    # member 001 (a learning rate of 1e-9 learns nothing) is held inside its epoch 2 until the sweep stops it: if
    # the pruner did not, it would never end (a hang guard fails it)
    env = hold.env("batch:1:1", {**ENV, "SNNRUN_TEST_HOLD_ONLY": "001_lr="})
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = Path(result.stdout.strip().splitlines()[-1])
    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [(r["member"], r["status"]) for r in rows] == [("000_lr=0.002", "done"), ("001_lr=1e-09", "pruned")]
    assert rows[0]["epochs"] == "3" and rows[1]["pruned_at_epoch"] == "1"
    member = folder / "001_lr=1e-09"
    pruned = json.loads((member / "pruned.json").read_text())
    assert pruned["epoch"] == 1 and pruned["pruner"] == "median" and pruned["reported"] == "val_accuracy"
    assert pruned["val_accuracy"] < float(rows[0]["val_accuracy"])
    assert not (member / "summary.json").exists() and len((member / "metrics.jsonl").read_text().splitlines()) < 3
    assert "pruned by the sweep's median pruner after epoch 1" in (member / "run.log").read_text()
    assert "pruned after epoch 1 001_lr=1e-09" in " ".join(result.stderr.split())
    trial = by_member(study_of(f"sqlite:///{folder / 'study.db'}", folder))["001_lr=1e-09"][-1]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
    for plot in ("sweep.png", "optimization_history.png", "intermediate_values.png"):
        assert (folder / plot).is_file()


@needs_mnist
def test_tpe_sweep_stopped_by_ctrl_c_keeps_finished_trials_and_resumes_the_interrupted_one(tmp_path, hold):
    out = tmp_path / "out"
    args = snnrun_sweep(*SMALL, "--out", str(out), "--search", "tpe", "--trials", "3", "--seed", "4",
                        "--range", "train.lr=1e-3:1e-2:log", "--range", "model.neuron.beta=0.5:0.99")
    # member 001 is held in the 3rd batch of its epoch 2 (of 2) until the Ctrl-C reaches it
    proc = subprocess.Popen(args, cwd=ROOT, env=hold.env("batch:1:3", {**ENV, "SNNRUN_TEST_HOLD_ONLY": "/001_lr="}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hold.wait(proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=900)  # (timeouts here only guard against a hang)
    assert proc.returncode == 130, stderr[-3000:]
    folder = Path(stdout.strip().splitlines()[-1])
    url = f"sqlite:///{folder / 'study.db'}"
    first = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [r["status"] for r in first] == ["done", "interrupted"]  # the third member was never started
    stopped = folder / first[1]["member"]
    assert (stopped / "checkpoints" / "last.pt").is_file() and not (stopped / "summary.json").exists()
    done = folder / first[0]["member"] / "summary.json"
    stamp = done.stat().st_mtime_ns
    tries = by_member(study_of(url, folder))
    assert [t.state.name for t in tries[first[1]["member"]]] == ["FAIL", "WAITING"]  # queued again, same values
    assert tries[first[1]["member"]][1].system_attrs["fixed_params"] == tries[first[1]["member"]][0].params

    again = subprocess.run(snnrun_sweep("--resume", str(folder)), cwd=ROOT, env=ENV, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("done before") == 1 and done.stat().st_mtime_ns == stamp
    assert "resumed on" in (stopped / "run.log").read_text()  # from its checkpoint, not started over
    rows = list(csv.DictReader((folder / "sweep.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 3 and rows[:2] != first
    assert [(r["member"], r["train.lr"], r["model.neuron.beta"]) for r in rows[:2]] == \
        [(r["member"], r["train.lr"], r["model.neuron.beta"]) for r in first]
    assert all(1e-3 <= float(r["train.lr"]) <= 1e-2 and 0.5 <= float(r["model.neuron.beta"]) <= 0.99 for r in rows)
    assert len({r["train.lr"] for r in rows}) == 3
    for plot in ("sweep.png", "optimization_history.png", "param_importances.png"):
        assert (folder / plot).is_file()

    collected = subprocess.run(snnrun_sweep("--collect", str(folder)), cwd=ROOT, env=ENV, capture_output=True,
                               text=True, timeout=900)
    assert collected.returncode == 0 and collected.stdout.strip().splitlines()[-1] == str(folder), collected.stderr
    assert "start " not in collected.stderr and list(csv.DictReader((folder / "sweep.csv").open())) == rows


def _postgres_binaries() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, pg_ctl), or of those on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a free loopback port (as the `postgres` user when we are root, which
    initdb refuses to be), its data in a temporary folder; the URL of its database. Stopped and removed after."""
    pytest.importorskip("psycopg", reason="psycopg not installed (the sweep extra: pip install 'snnrun[sweep]')")
    binaries = _postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql; .ci/run does it)")
    home = Path(tempfile.mkdtemp(prefix="snnrun-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no postgres user to run the server as")
        os.chown(home, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = home / "data"
    quiet = {"capture_output": True, "text": True, "timeout": 300}  # (a hang guard only)
    made = subprocess.run([*as_user, binaries / "initdb", "-D", data, "-U", "snnrun", "-A", "trust"], **quiet)
    assert made.returncode == 0, made.stderr
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {home}"
    started = subprocess.run([*as_user, binaries / "pg_ctl", "-D", data, "-o", options, "-l", home / "log", "-w",
                              "-t", "300", "start"], **quiet)
    assert started.returncode == 0, started.stderr + (home / "log").read_text()
    try:
        yield f"postgresql://snnrun@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], **quiet)
        shutil.rmtree(home, ignore_errors=True)


def _running_with(text: str) -> list[int]:
    """Processes (not zombies) whose command line holds text."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
    return pids


@needs_mnist
def test_two_workers_share_a_postgresql_study_and_one_killed_mid_trial_is_retried(tmp_path, hold, postgres):
    import optuna

    a, b = tmp_path / "a", tmp_path / "b"  # each worker's own --out, as on two machines
    # worker A starts the study (6 members, 2 at a time); its member 000 is held inside epoch 2 until A is killed
    env = hold.env("batch:1:1", {**ENV, "SNNRUN_TEST_HOLD_ONLY": "000_seed=0"})
    proc_a = subprocess.Popen(snnrun_sweep(*SMALL, "--out", str(a), "--grid", "train.seed=[0, 1, 2, 3, 4, 5]",
                                           "--storage", postgres, "--heartbeat", "5", "--parallel", "2"),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    hold.wait(proc_a)
    name = next(a.iterdir()).name
    study = optuna.load_study(study_name=name, storage=postgres)
    proc_b = subprocess.Popen(snnrun_sweep("--storage", postgres, "--join", name, "--out", str(b), "--heartbeat",
                                           "5"), cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    give_up = time.monotonic() + 900  # only against a hang: B takes a member, or A has taken all but the held one
    while not list(b.glob(f"{name}/0*_seed=*")) and study.get_trials(states=(optuna.trial.TrialState.WAITING,)):
        assert proc_b.poll() is None, proc_b.communicate()[1][-3000:]
        assert time.monotonic() < give_up
        time.sleep(0.2)
    proc_a.kill()  # SIGKILL, mid-trial: its members die with it, its trials' heartbeats stop
    proc_a.wait()
    stdout, stderr = proc_b.communicate(timeout=900)  # B runs what is left and A's trials once they go stale
    assert proc_b.returncode == 0, stderr[-3000:]
    assert not _running_with(str(a))  # no member of A's ran on after it

    tries = by_member(optuna.load_study(study_name=name, storage=postgres))
    members = [f"{i:03d}_seed={i}" for i in range(6)]
    assert sorted(tries) == members
    for member in members:  # each finished exactly once, in the folder of the worker that ran it
        finished = [t for t in tries[member] if t.state.name == "COMPLETE"]
        assert len(finished) == 1 and all(t.state.name == "FAIL" for t in tries[member] if t not in finished)
        ran_in = Path(finished[0].user_attrs["folder"])
        other = (b if ran_in.is_relative_to(a) else a) / name / member
        assert (ran_in / "summary.json").is_file()
        if (other / "summary.json").exists():
            # A was killed after this member's run had finished but before A recorded it: a failed try of A's,
            # run again by B (the two workers stand for two machines, so B cannot see A's folder)
            assert other.is_relative_to(a) and ran_in.is_relative_to(b)
            assert any(t.state.name == "FAIL" and t.user_attrs["worker"].endswith(f":{proc_a.pid}")
                       for t in tries[member])
    held = tries["000_seed=0"]  # A's held member: failed when its heartbeat stopped, run again by B
    assert held[0].state.name == "FAIL" and held[0].user_attrs["worker"].endswith(f":{proc_a.pid}")
    assert held[-1].system_attrs["failed_trial"] == 0 and held[-1].user_attrs["worker"].endswith(f":{proc_b.pid}")
    rows = list(csv.DictReader((b / name / "sweep.csv").open()))  # B's table has every worker's results
    assert [r["member"] for r in rows] == members and {r["status"] for r in rows} == {"done"}
    by_a = [m for m in members if tries[m][-1].user_attrs["worker"].endswith(f":{proc_a.pid}")]
    said = " ".join(stderr.split())
    assert all(f"{m}: " in said for m in by_a)  # listed as folders on another worker
