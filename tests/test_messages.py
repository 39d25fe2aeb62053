"""What a new user reads: a file given to the wrong command, eval given something that is not a training run,
the example configs from any folder, help text, and a resumed epoch's progress."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.config import apply_overrides, load_yaml
from snnrun.data import available
from snnrun.schema import parse_train
from snnrun.training import Callbacks, TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
runner = CliRunner()
needs_mnist = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")


@pytest.mark.parametrize("command, config, other", [("simulate", "smoke", "train"), ("train", "step", "simulate")])
def test_a_config_for_the_other_command_says_which_command_it_is_for(in_tmp, command, config, other):
    result = runner.invoke(app, [command, f"configs/{config}.yaml"])
    assert result.exit_code == 2
    assert f"this file is a config for `snnrun {other}`" in " ".join(result.output.split())


def test_eval_says_what_it_takes(in_tmp):
    config = runner.invoke(app, ["eval", "configs/smoke.yaml"])
    assert config.exit_code == 2 and "a config file, not a run" in config.output
    simulated = Path(runner.invoke(app, ["simulate"]).output.strip().splitlines()[-1])
    result = runner.invoke(app, ["eval", str(simulated)])
    assert result.exit_code == 2 and "a simulate run, which has no trained network" in " ".join(result.output.split())


def test_example_configs_work_by_name_from_any_folder(tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    run = subprocess.run([sys.executable, "-m", "snnrun", "simulate", "lif"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert Path(tmp_path / run.stdout.strip().splitlines()[-1]).name.endswith("_lif-step")
    default = subprocess.run([sys.executable, "-m", "snnrun", "simulate"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert default.returncode == 0 and default.stdout.strip().endswith("_step-current")  # configs/step.yaml
    copied = subprocess.run([sys.executable, "-m", "snnrun", "configs", "--copy", "mine"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert copied.returncode == 0 and {"smoke.yaml", "mnist.yaml", "step.yaml"} <= {
        p.name for p in (tmp_path / "mine").iterdir()}
    missing = subprocess.run([sys.executable, "-m", "snnrun", "train", "nope"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert missing.returncode == 2 and "the example configs, by name:" in missing.stderr and "smoke" in missing.stderr


def test_help_shows_no_type_beside_flags():
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--force" in text and "<bool>" not in text
    assert "sweep" not in runner.invoke(app, ["import", "--help"], env={"COLUMNS": "200"}).output


@needs_mnist
def test_a_run_resumed_mid_epoch_starts_its_progress_at_the_batches_done(tmp_path):
    data = apply_overrides(load_yaml(REPO / "configs" / "smoke.yaml"), [
        f"data.root={DATA}", "device=cpu", "train.subset.train=640", "train.subset.test=100", "model.hidden=[16]",
        "data.val_size=100"])
    cfg = parse_train(data, "test")
    batches = {"n": 0}

    def stop_after_three():
        batches["n"] += 1
        return batches["n"] == 4

    with pytest.raises(TrainingInterrupted):
        train(cfg, tmp_path, torch.device("cpu"), Callbacks(should_stop=stop_after_three))
    starts = []
    train(cfg, tmp_path, torch.device("cpu"), Callbacks(epoch_started=lambda *args: starts.append(args)),
          resume=True)
    assert starts == [(0, 10, 3)]  # 10 batches in the epoch, 3 of them done before the stop
