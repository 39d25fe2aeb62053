"""`snnrun compare`: the config keys runs differ in, their final metrics, and their curves overlaid."""

import csv
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from snnrun import plots
from snnrun.cli import app
from snnrun.commands import run_compare, run_simulation
from snnrun.config import RunFolderError
from snnrun.schema import parse_simulation

REPO = Path(__file__).resolve().parents[1]
FI = yaml.safe_load((REPO / "configs" / "fi_curve.yaml").read_text())


def simulated(tmp_path, **neuron) -> Path:
    data = {**FI, "time_steps": 1000, "neuron": {**FI["neuron"], **neuron}}
    return run_simulation(parse_simulation(data, "fi"), tmp_path / "runs").folder


def test_runs_are_compared_by_the_keys_they_differ_in(tmp_path):
    runs = [simulated(tmp_path), simulated(tmp_path, tau_ms=20.0), simulated(tmp_path, refractory_ms=5.0)]
    result = run_compare(runs, tmp_path / "compare")
    assert result.keys == ["neuron.tau_ms", "neuron.refractory_ms"]
    rows = list(csv.DictReader((result.folder / "compare.csv").open()))
    assert [r["neuron.tau_ms"] for r in rows] == ["10", "20", "10"]
    rates = [float(r["mean_firing_rate"]) for r in rows]
    assert rates[0] > rates[2] > 0 and rates[0] > rates[1] > 0  # slower membrane or longer refractoriness fire less
    assert (result.folder / "compare.png").is_file()
    assert [run.label for run in result.runs] == ["tau_ms=10 refractory_ms=2", "tau_ms=20 refractory_ms=2",
                                                  "tau_ms=10 refractory_ms=5"]


def test_compare_command_prints_the_table_and_its_folder(tmp_path):
    runs = [str(simulated(tmp_path)), str(simulated(tmp_path, v_thresh_mv=-55.0))]
    result = CliRunner().invoke(app, ["compare", *runs, "--out", str(tmp_path / "c")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "differing in neuron.v_thresh_mv" in result.output
    assert (Path(result.output.strip().splitlines()[-1]) / "compare.csv").is_file()


def test_a_sweep_stands_for_its_members(tmp_path):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    for i, tau in enumerate((5.0, 10.0, 20.0)):
        folder = simulated(tmp_path, tau_ms=tau)
        folder.rename(sweep / f"{i:03d}_tau_ms={tau:g}")
    result = run_compare([sweep], tmp_path / "compare")
    assert len(result.runs) == 3 and result.keys == ["neuron.tau_ms"]


@pytest.mark.parametrize("make, message", [
    (lambda tmp: [simulated(tmp)], "at least two runs"),
    (lambda tmp: [simulated(tmp), tmp / "nothing"], "not a run or sweep folder"),
])
def test_what_cannot_be_compared_is_a_clear_error(tmp_path, make, message):
    with pytest.raises(RunFolderError, match=message):
        run_compare(make(tmp_path), tmp_path / "compare")
    assert not (tmp_path / "compare").exists()


def test_training_curves_of_several_runs_share_one_figure(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5, "val_accuracy": 0.9 + e / 100}
               for e in (1, 2, 3)]
    path = plots.compared_training([("lr=0.001", history), ("lr=0.01", history[:2])], tmp_path / "c.png")
    assert path.stat().st_size > 10_000
