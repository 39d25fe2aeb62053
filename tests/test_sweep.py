"""`snnrun sweep`: planning (grid, seeded random draws, member names), bad input, and whole sweeps of child runs
that can be stopped and continued."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
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
