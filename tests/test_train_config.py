"""`snnrun train`'s config paths that used to mislead: what the resolved config records, the validation size
with a subset, kind switches from the command line, and --resume beside a config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.commands import load_train_config
from snnrun.config import ConfigError
from snnrun.data import available
from snnrun.training import load_splits

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
needs_mnist = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")
SMALL = ["--set", f"data.root={DATA}", "--set", "train.subset.train=640", "--set", "train.subset.test=200",
         "--set", "model.hidden=[32]", "--set", "data.val_size=500", "--device", "cpu"]


@needs_mnist
def test_a_subset_keeps_the_validation_size_asked_for():
    cfg, _ = load_train_config(REPO / "configs" / "smoke.yaml", [f"data.root={DATA}", "train.subset.train=300",
                                                                  "data.val_size=1000"])
    train, val, _ = load_splits(cfg, "cpu")
    assert len(train) == 300 and len(val) == 1000


@needs_mnist
def test_resolved_config_records_the_threads_that_ran_and_reproduces_the_run(tmp_path):
    """A sweep member runs with the sweep's thread share through OMP_NUM_THREADS; its config.yaml must say so,
    or training again from it (one thread for a small network) gives other numbers."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    first = subprocess.run([sys.executable, "-m", "snnrun", "train", "configs/smoke.yaml", *SMALL, "--out",
                            str(tmp_path / "a")], cwd=REPO, env={**env, "OMP_NUM_THREADS": "2"},
                           capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = Path(first.stdout.strip().splitlines()[-1])
    assert yaml.safe_load((folder / "config.yaml").read_text())["threads"] == 2
    again = subprocess.run([sys.executable, "-m", "snnrun", "train", str(folder / "config.yaml"), "--out",
                            str(tmp_path / "b")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    second = Path(again.stdout.strip().splitlines()[-1])
    summaries = [json.loads((f / "summary.json").read_text()) for f in (folder, second)]
    for summary in summaries:
        summary.pop("train_seconds"), summary.pop("peak_memory_mb")  # measured, not computed
    assert summaries[0] == summaries[1]


def test_switching_the_encoding_kind_starts_it_from_its_defaults_keeping_the_time_steps(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"encoding": {"kind": "direct", "time_steps": 12, "gain": 3.0}}))
    notes = []
    cfg, _ = load_train_config(config, ["encoding.kind=rate"], notes=notes)
    assert (cfg.encoding.kind, cfg.encoding.time_steps, cfg.encoding.gain) == ("rate", 12, 1.0)
    assert notes and "encoding.kind: direct -> rate" in notes[0] and "gain" in notes[0]


def test_resume_beside_a_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="either a config"):
        load_train_config(REPO / "configs" / "smoke.yaml", [], resume=tmp_path)
    result = CliRunner().invoke(app, ["train", "configs/smoke.yaml", "--resume", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


SHIPPED = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(p.name for p in SHIPPED.glob("*.yaml")
                                        if yaml.safe_load(p.read_text()).get("neuron") is None
                                        and "sweep" not in yaml.safe_load(p.read_text())))
def test_every_shipped_training_config_is_valid(path):
    from snnrun.config import load_yaml
    from snnrun.schema import parse_train

    cfg = parse_train(load_yaml(SHIPPED / path), path)
    if cfg.learning == "stdp":  # Diehl & Cook's network: classes come from the neurons' assignments
        assert cfg.stdp.excitatory_neurons >= 10
        return
    assert cfg.model.layer_sizes[-1] == cfg.model.outputs >= cfg.data.classes
