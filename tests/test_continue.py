"""Training on from a finished run (`--resume RUN --epochs N`), fine-tuning from its weights (`train.init_from`),
and scoring it otherwise (`eval RUN --set ...`)."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.data import available

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
pytestmark = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")
runner = CliRunner()
SMALL = ["--set", f"data.root={DATA}", "--set", "train.subset.train=640", "--set", "train.subset.test=100",
         "--set", "model.hidden=[16]", "--set", "data.val_size=100", "--device", "cpu", "--set", "threads=1"]


def train(tmp_path, *args) -> Path:
    result = runner.invoke(app, ["train", *args, "--out", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    return Path(result.output.strip().splitlines()[-1])


def outcome(folder: Path):
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("train_seconds"), summary.pop("peak_memory_mb")  # measured, not computed
    history = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return summary, [(r["epoch"], r["train_loss"], r["val_accuracy"]) for r in history], \
        torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    return train(tmp_path_factory.mktemp("two"), str(REPO / "configs" / "smoke.yaml"), *SMALL,
                 "--set", "train.epochs=2")


def test_a_finished_run_continued_to_three_epochs_equals_a_three_epoch_run(tmp_path, two_epochs):
    before = (two_epochs / "summary.json").read_text()
    continued = train(tmp_path, "--resume", str(two_epochs), "--epochs", "3")
    assert continued != two_epochs and (two_epochs / "summary.json").read_text() == before  # kept as it was
    straight = train(tmp_path, str(REPO / "configs" / "smoke.yaml"), *SMALL, "--set", "train.epochs=3")
    (summary, history, weights), (summary_3, history_3, weights_3) = outcome(continued), outcome(straight)
    assert summary == summary_3 and history == history_3
    assert all(torch.equal(weights[k], weights_3[k]) for k in weights)
    assert "continued from" in (continued / "run.log").read_text()


def test_continuing_needs_a_finished_run_and_more_epochs(tmp_path, two_epochs):
    fewer = runner.invoke(app, ["train", "--resume", str(two_epochs), "--epochs", "2", "--out", str(tmp_path)])
    assert fewer.exit_code == 2 and "has trained 2 epochs" in fewer.output
    alone = runner.invoke(app, ["train", str(REPO / "configs" / "smoke.yaml"), "--epochs", "3"])
    assert alone.exit_code == 2 and "train.epochs" in alone.output
    assert not tmp_path.joinpath("runs").exists()


def test_fine_tuning_starts_from_the_weights_of_a_run(tmp_path, two_epochs):
    tuned = train(tmp_path, str(REPO / "configs" / "smoke.yaml"), *SMALL, "--set",
                  f"train.init_from={two_epochs}", "--set", "train.lr=5e-4")
    scratch = train(tmp_path, str(REPO / "configs" / "smoke.yaml"), *SMALL, "--set", "train.lr=5e-4")
    first = [json.loads((f / "metrics.jsonl").read_text().splitlines()[0])["train_loss"] for f in (tuned, scratch)]
    assert first[0] < first[1]  # already trained for two epochs


def test_fine_tuning_from_weights_of_another_shape_is_an_error_naming_the_key(tmp_path, two_epochs):
    result = runner.invoke(app, ["train", str(REPO / "configs" / "smoke.yaml"), *SMALL, "--set",
                                 "model.hidden=[24]", "--set", f"train.init_from={two_epochs}", "--out",
                                 str(tmp_path / "runs")])
    assert result.exit_code == 2 and "train.init_from" in result.output and "do not fit" in result.output
    assert not (tmp_path / "runs").exists()


def test_eval_set_scores_a_subset_trained_run_on_more_test_images(two_epochs):
    result = runner.invoke(app, ["eval", str(two_epochs), "--set", "train.subset.test=300"])
    assert result.exit_code == 0, result.output
    report = json.loads((Path(result.output.strip().splitlines()[-1]) / "eval.json").read_text())
    assert report["images"] == 300 and report["overrides"] == ["train.subset.test=300"]
    changed = runner.invoke(app, ["eval", str(two_epochs), "--set", "model.hidden=[8]"])
    assert changed.exit_code == 2 and "would change the trained network" in changed.output
