"""`snnrun simulate` end to end: run folders, traces, metrics, plots and errors."""

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.runs import claim_run_dir
from snnrun.simulation import parse_simulation, simulate

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, ["simulate", *args], catch_exceptions=False)
    return result


def test_default_simulation_writes_a_complete_run_folder(in_tmp):
    result = invoke()
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])  # the last line is the run folder
    assert folder.parent == Path("outputs/simulate") and folder.name.endswith("_step-current")
    for name in ("config.yaml", "env.json", "traces.npz", "metrics.json", "current_membrane_spikes.png", "run.log"):
        assert (folder / name).is_file(), name
    traces = np.load(folder / "traces.npz")
    assert traces["membrane"].shape == traces["current"].shape == traces["spikes"].shape == (200, 1)
    assert traces["t"].shape == (200,)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["per_neuron"]["spike_count"][0] == int(traces["spikes"].sum()) > 5
    assert metrics["per_neuron"]["first_spike_step"][0] == int(np.argmax(traces["spikes"][:, 0]))
    env = json.loads((folder / "env.json").read_text())
    assert "torch" in env["versions"] and env["command_line"]
    assert not list(Path("outputs/simulate").glob(".staging-*"))


def test_resolved_config_reproduces_the_run(in_tmp):
    first = Path(invoke("--current", "poisson").output.strip().splitlines()[-1])
    second = Path(invoke(str(first / "config.yaml")).output.strip().splitlines()[-1])
    assert first != second
    a, b = np.load(first / "traces.npz"), np.load(second / "traces.npz")
    assert np.array_equal(a["membrane"], b["membrane"]) and np.array_equal(a["spikes"], b["spikes"])


def test_population_with_per_neuron_amplitudes_draws_raster_and_fi_curve(in_tmp):
    result = invoke("configs/fi_curve.yaml", "--set", "time_steps=500")
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    assert (folder / "raster.png").is_file() and (folder / "fi_curve.png").is_file()
    rates = json.loads((folder / "metrics.json").read_text())["per_neuron"]["firing_rate"]
    assert rates[0] == 0 and rates[-1] > rates[10] > 0  # more current, faster firing


def test_set_overrides_reach_the_simulation(in_tmp):
    result = invoke("--set", "neuron.threshold=100", "--set", "name=quiet")
    folder = Path(result.output.strip().splitlines()[-1])
    assert folder.name.endswith("_quiet")
    assert json.loads((folder / "metrics.json").read_text())["population"]["total_spikes"] == 0
    assert yaml.safe_load((folder / "config.yaml").read_text())["neuron"]["threshold"] == 100


def test_two_runs_in_the_same_second_get_their_own_folders(tmp_path):
    now = dt.datetime(2026, 1, 2, 3, 4, 5)
    a, b = claim_run_dir(tmp_path, "x", now), claim_run_dir(tmp_path, "x", now)
    assert a != b and a.is_dir() and b.is_dir()
    assert a.name == "2026-01-02_03-04-05_x"


@pytest.mark.parametrize("args,needle", [
    (["--set", "neuron.beta=2"], "neuron.beta"),
    (["--set", "neuron.betta=0.5"], "unknown key"),
    (["configs/missing.yaml"], "no such config file"),
    (["--set", "neurons=2", "--set", "stimulus.amplitude=[1, 2, 3]"], "stimulus.amplitude"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--current", "square"], "square"),
])
def test_bad_input_exits_2_with_one_line_and_no_run_folder(in_tmp, args, needle):
    proc = subprocess.run([sys.executable, "-m", "snnrun", "simulate", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and needle in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not Path("outputs").exists() or not any(Path("outputs").rglob("*.npz"))


def test_version_and_help():
    assert runner.invoke(app, ["--version"]).output.startswith("snnrun ")
    help_text = runner.invoke(app, ["simulate", "--help"]).output
    assert "snnrun simulate --current pulse" in help_text


def test_lif_population_in_float32_matches_float64_spike_counts():
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "fi_curve.yaml").read_text())
    data["time_steps"] = 2000
    r32 = simulate(parse_simulation(data, "x"))
    r64 = simulate(parse_simulation({**data, "dtype": "float64"}, "x"))
    assert r32.metrics["per_neuron"]["spike_count"] == r64.metrics["per_neuron"]["spike_count"]
    assert np.max(np.abs(r32.membrane - r64.membrane)) < 1e-3


def test_large_population_records_only_the_first_neurons_but_counts_all():
    cfg = parse_simulation({"neurons": 5000, "record_neurons": 10, "time_steps": 50,
                            "stimulus": {"kind": "poisson", "p": 0.3, "amplitude": 0.6}}, "x")
    result = simulate(cfg)
    assert result.membrane.shape == (50, 10)
    assert len(result.metrics["per_neuron"]["spike_count"]) == 5000
    assert result.metrics["population"]["total_spikes"] > 1000
    torch.testing.assert_close(torch.tensor(result.spikes.sum(0)),
                               torch.tensor(result.metrics["per_neuron"]["spike_count"][:10]))
