"""`--tensorboard`: scalars, weight and membrane histograms and the raster image per epoch in RUN/tb; without the
tensorboard package, a clear error before any work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.data import available

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
runner = CliRunner()
TINY = ["--set", f"data.root={DATA}", "--device", "cpu", "--set", "train.epochs=2", "--set", "model.hidden=[32]",
        "--set", "train.subset.train=640", "--set", "train.subset.test=200"]
pytestmark = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")


def test_tensorboard_run_logs_every_epoch(in_tmp):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.invoke(app, ["train", "configs/smoke.yaml", "--tensorboard", *TINY])
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    events = EventAccumulator(str(folder / "tb"), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for tag, key in (("val/val_accuracy", "val_accuracy"), ("train/train_loss", "train_loss"), ("run/lr", "lr")):
        logged = events.Scalars(tag)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in records], rel=1e-6)
    assert len(events.Scalars("train/train_spikes_per_neuron_step/hidden1")) == 2
    histograms = events.Tags()["histograms"]
    assert {"weights/linears.0.weight", "weights/readout.weight", "membrane/hidden1", "membrane/output"} <= set(
        histograms)
    raster = events.Images("raster")
    assert [image.step for image in raster] == [1, 2] and raster[0].width > 300
    assert "tensorboard: true" in (folder / "config.yaml").read_text()


def test_tensorboard_without_the_package_is_a_clear_error(in_tmp, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    result = runner.invoke(app, ["train", "configs/smoke.yaml", "--tensorboard", *TINY])
    assert result.exit_code == 2
    assert "pip install 'snnrun[tensorboard]'" in " ".join(result.output.split())
    assert "Traceback" not in result.output and not Path("outputs").exists()
