"""`snnrun predict`: a trained run's classes for single images, as evaluation would score them."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.config import apply_overrides, load_yaml
from snnrun.data import available, write_idx
from snnrun.evaluation import load_network, locate
from snnrun.predict import predict, read_images
from snnrun.schema import parse_train
from snnrun.training import evaluate, load_splits, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
pytestmark = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    data = apply_overrides(load_yaml(REPO / "configs" / "smoke.yaml"), [
        f"data.root={DATA}", "device=cpu", "train.subset.train=1280", "train.subset.test=20", "model.hidden=[32]",
        "data.val_size=100", "encoding.kind=rate", "encoding.time_steps=10"])
    (folder / "config.yaml").write_text(json.dumps(data))  # JSON is YAML
    train(parse_train(data, "test"), folder, torch.device("cpu"))
    return locate(folder)


def test_predictions_of_idx_images_are_those_evaluation_makes(trained, tmp_path):
    _, _, test = load_splits(trained.config, "cpu")
    write_idx(tmp_path / "digits-idx3-ubyte", test.images[:20].numpy())
    images = read_images([tmp_path / "digits-idx3-ubyte"])
    assert [image.name for image in images[:2]] == ["digits-idx3-ubyte[0]", "digits-idx3-ubyte[1]"]
    model = load_network(trained, "cpu")
    results = predict(model, trained.config, images, "cpu")
    expected = evaluate(model, test, trained.config, with_predictions=True)["predictions"]
    assert [r["class"] for r in results] == expected.tolist()  # same seeded rate code, same classes
    assert all(sum(r["output_spikes"]) >= 0 and len(r["readout"]) == 10 for r in results)


def test_a_picture_is_made_to_look_like_mnist_and_says_how(trained, tmp_path):
    _, _, test = load_splits(trained.config, "cpu")
    digit = test.images[0].numpy()
    Image.fromarray(digit).save(tmp_path / "as_is.png")
    Image.fromarray(255 - digit).save(tmp_path / "paper.png")  # a dark digit on white paper
    Image.fromarray(255 - digit).resize((84, 84)).save(tmp_path / "big.png")
    as_is, paper, big = read_images([tmp_path / "as_is.png", tmp_path / "paper.png", tmp_path / "big.png"])
    assert np.array_equal(as_is.pixels, digit) and as_is.notes == []
    assert np.array_equal(paper.pixels, digit) and paper.notes == ["inverted (dark digit on a light ground)"]
    assert big.pixels.shape == (28, 28) and big.notes[0] == "resized from 84x84"


def test_predict_command_prints_a_class_per_image_and_rejects_what_is_not_an_image(trained, tmp_path):
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "blank.png")
    result = CliRunner().invoke(app, ["predict", str(trained.folder), str(tmp_path / "blank.png"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["image"] == "blank.png"
    (tmp_path / "notes.txt").write_text("not a picture")
    bad = CliRunner().invoke(app, ["predict", str(trained.folder), str(tmp_path / "notes.txt")])
    assert bad.exit_code == 2 and "not an image file" in bad.output
