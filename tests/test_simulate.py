"""`snnrun simulate` end to end: run folders, traces, metrics, plots and errors."""

import datetime as dt
import json
import math
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
from snnrun.schema import parse_simulation
from snnrun.simulation import simulate

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
    assert traces["membrane"].shape == traces["current"].shape == (200, 1)
    assert traces["t"].shape == (200,)
    steps, neurons = traces["spike_steps"], traces["spike_neurons"]  # one (step, neuron) pair per spike
    assert len(steps) == len(neurons) and set(neurons) == {0} and np.all(np.diff(steps) > 0)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["per_neuron"]["spike_count"][0] == len(steps) > 5
    assert metrics["per_neuron"]["first_spike_step"][0] == int(steps[0])
    # each spike step has the membrane above threshold (snnTorch's delayed reset shows it at the spike step)
    assert np.all(traces["membrane"][steps, 0] > 1.0)
    env = json.loads((folder / "env.json").read_text())
    assert "torch" in env["versions"] and env["command_line"]
    assert not list(Path("outputs/simulate").glob(".staging-*"))


def test_resolved_config_reproduces_the_run(in_tmp):
    first = Path(invoke("--current", "poisson").output.strip().splitlines()[-1])
    second = Path(invoke(str(first / "config.yaml")).output.strip().splitlines()[-1])
    assert first != second
    a, b = np.load(first / "traces.npz"), np.load(second / "traces.npz")
    assert np.array_equal(a["membrane"], b["membrane"]) and np.array_equal(a["spike_steps"], b["spike_steps"])


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


# --------------------------------------------------------------------------- config paths that used to break


def test_scalar_tau_and_dt_give_beta_exp_minus_dt_over_tau():
    base = {"time_steps": 100, "stimulus": {"kind": "step", "amplitude": 0.05, "onset": 0}}
    by_tau = simulate(parse_simulation({**base, "neuron": {"tau": 50.0, "dt": 1.0}}, "x"))
    by_beta = simulate(parse_simulation({**base, "neuron": {"beta": math.exp(-1 / 50)}}, "x"))
    assert np.array_equal(by_tau.membrane, by_beta.membrane) and len(by_tau.spike_steps) > 0


def test_scalar_tau_and_dt_from_the_command_line(in_tmp):
    result = invoke("--set", "neuron.beta=null", "--set", "neuron.tau=50", "--set", "neuron.dt=1")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args", [
    ["--set", "neuron.model=lapicque", "--set", "neuron.beta=0.9", "--set", "neuron.C=0.005"],
    ["configs/lapicque.yaml", "--set", "neuron.beta=0.9"],
])
def test_lapicque_beta_beside_c_is_an_error_naming_both(in_tmp, args):
    result = invoke(*args)
    assert result.exit_code == 2
    assert "neuron.beta" in result.output and "give C, or beta" in result.output


def test_lapicque_capacitance_reaches_the_neuron(in_tmp):
    counts = []
    for c in ("0.005", "0.5"):
        folder = Path(invoke("--set", "neuron.model=lapicque", "--set", "neuron.R=5", "--set", f"neuron.C={c}",
                             "--set", "stimulus.amplitude=0.5").output.strip().splitlines()[-1])
        counts.append(json.loads((folder / "metrics.json").read_text())["population"]["total_spikes"])
    assert counts[0] > counts[1]  # a smaller capacitance charges faster


@pytest.mark.parametrize("args, kind, dropped", [
    (["--set", "neuron.model=lif"], "neuron.model: leaky -> lif", "beta"),
    (["--set", "stimulus.kind=pulse"], "stimulus.kind: step -> pulse", "onset"),
    (["configs/lif.yaml", "--set", "neuron.model=leaky"], "neuron.model: lif -> leaky", "tau_ms"),
    (["configs/lif.yaml", "--current", "pulse"], "stimulus.kind: step -> pulse", "offset"),
])
def test_switching_a_kind_on_the_command_line_starts_that_section_from_its_defaults(in_tmp, args, kind, dropped):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    log = (folder / "run.log").read_text()
    assert kind in log and dropped in log.split(kind)[1].splitlines()[0]  # the note names the dropped keys


def test_current_pulse_on_a_lif_neuron_gets_amplitudes_in_na_that_make_it_fire(in_tmp):
    result = invoke("configs/lif.yaml", "--current", "pulse")
    folder = Path(result.output.strip().splitlines()[-1])
    assert folder.name.endswith("_lif-step")  # the file's own name is kept
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["per_neuron"]["spike_count"] == [4]  # one spike per pulse
    assert "fitted to the lif neuron" in (folder / "run.log").read_text()
    used = yaml.safe_load((folder / "config.yaml").read_text())["stimulus"]
    assert used["kind"] == "pulse" and used["amplitude"] > 100  # nA, for one 0.1 ms pulse


def test_a_unitless_current_left_from_the_file_is_named_when_the_neuron_gets_units(in_tmp):
    folder = Path(invoke("--set", "neuron.model=lif").output.strip().splitlines()[-1])
    assert "amplitude 0.21 from configs/step.yaml was written for a leaky neuron" in (folder / "run.log").read_text()


def test_sweep_over_neuron_models_plans_valid_members(in_tmp):
    from snnrun.commands import plan_sweep

    _, plan = plan_sweep(Path("configs/step.yaml"), ["neuron.model=[leaky, lif, synaptic]"], [])
    assert len(plan.members) == 3


# --------------------------------------------------------------------------- memory


def test_traces_too_long_for_memory_are_an_error_before_any_work(in_tmp):
    proc = subprocess.run([sys.executable, "-m", "snnrun", "simulate", "--set", "neurons=1000", "--set",
                           "time_steps=100000000"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "300"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "--set time_steps=100000000" in proc.stderr and "reduce record_neurons or time_steps" in proc.stderr
    assert not Path("outputs").exists()


def test_a_population_too_large_for_memory_says_reduce_neurons():
    from snnrun.config import ConfigError
    from snnrun.simulation import check_memory, memory_estimate

    cfg = parse_simulation({"neurons": 100_000_000}, "big.yaml")
    assert sum(memory_estimate(cfg).values()) > 30 * 2**30  # per-neuron statistics alone
    with pytest.raises(ConfigError, match="reduce neurons") as error:
        check_memory(cfg, 24 * 2**30, "big.yaml")
    assert error.value.key == "neurons"
    check_memory(parse_simulation({"neurons": 1000}, "x"), 24 * 2**30)  # small work passes


def test_spikes_are_events_and_their_memory_is_capped():
    from snnrun.config import ConfigError

    cfg = parse_simulation({"neurons": 2000, "time_steps": 300, "record_neurons": 5,
                            "stimulus": {"kind": "poisson", "p": 0.5, "amplitude": 1.5}}, "x")
    result = simulate(cfg, chunk_steps=7)  # events gathered across chunk boundaries
    assert len(result.spike_steps) == result.metrics["population"]["total_spikes"] > 10_000
    assert np.all(np.diff(result.spike_steps) >= 0)
    assert result.spikes.shape == (300, 5)
    with pytest.raises(ConfigError, match="reduce time_steps or neurons"):
        simulate(cfg, spike_memory=10_000 * 8)


@pytest.mark.parametrize("delay,after", [(True, 0.125), (False, 0.05 * 0.5 + 0.6)])
def test_simulate_resets_at_once_with_reset_delay_false(in_tmp, delay, after):
    # beta 0.5, I = 0.6 from step 0: U = 0.6, 0.9, 1.05 (spike). Delayed (snnTorch): U[3] = 0.525 + 0.6 - 1 = 0.125.
    # At once (Norse, SpikingJelly): U[2] = 1.05 - 1 = 0.05, U[3] = 0.025 + 0.6.
    result = invoke("--set", "neuron.beta=0.5", "--set", "stimulus.amplitude=0.6", "--set", "stimulus.onset=0",
                    "--set", "time_steps=4", "--set", f"neuron.reset_delay={str(delay).lower()}")
    assert result.exit_code == 0, result.output
    traces = np.load(Path(result.output.strip().splitlines()[-1]) / "traces.npz")
    assert list(traces["spike_steps"]) == [2]
    expected = [0.6, 0.9, 1.05 if delay else 0.05, after]
    assert traces["membrane"][:, 0] == pytest.approx(expected, abs=1e-6)
