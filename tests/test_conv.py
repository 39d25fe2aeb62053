"""Convolutional spiking networks (`model.layers`) and the MNIST family's other data sets."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from snnrun.cli import app
from snnrun.config import ConfigError, load_yaml
from snnrun.data import DataError, available, load_images, write_idx
from snnrun.network import Network
from snnrun.schema import config_to_dict, model_to_dict, parse_model, parse_train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
runner = CliRunner()
needs_mnist = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")
TUTORIAL6 = [{"conv": 12, "kernel": 5, "pool": 2}, {"conv": 64, "kernel": 5, "pool": 2}]


def test_hidden_is_the_short_form_of_linear_layers():
    torch.manual_seed(0)
    short = Network(parse_model({"hidden": [32, {"size": 16, "beta": 0.7}]}, "model", "t"), 4)
    torch.manual_seed(0)
    long = Network(parse_model({"layers": [{"linear": 32}, {"linear": 16, "beta": 0.7}]}, "model", "t"), 4)
    assert short.cfg.hidden == long.cfg.hidden
    state = short.state_dict()
    assert state.keys() == long.state_dict().keys()
    assert all(torch.equal(state[k], long.state_dict()[k]) for k in state)
    x = torch.rand(3, 784)
    assert torch.equal(short(x).logits, long(x).logits)
    assert "layers" not in model_to_dict(long.cfg)  # written as before: old and new MLP run folders read alike


def test_conv_layer_shapes_sizes_and_synapses_per_spike():
    cfg = parse_model({"layers": TUTORIAL6}, "model", "t")
    assert cfg.shapes == [(12, 12, 12), (64, 4, 4)]  # (28 - 5 + 1) / 2 = 12; (12 - 5 + 1) / 2 = 4
    assert cfg.layer_sizes == [1728, 1024, 10] and cfg.layer_names == ["hidden1", "hidden2", "output"]
    assert cfg.fan_outs == [12 * 25, 64 * 25, 10]
    assert cfg.dense_input_macs == 24 * 24 * 12 * 25  # the first convolution before its pooling


@pytest.mark.parametrize("layers,key,message", [
    ([{"conv": 12, "kernel": 5, "pool": 2}, {"conv": 8, "kernel": 13}], "model.layers[1]",
     "a 13x13 kernel (stride 1, padding 0) does not fit its input of 12 x 12 x 12"),
    ([{"linear": 12}, {"conv": 8}], "model.layers[1]", "convolutions come first"),
    ([{"conv": 8, "kernal": 3}], "model.layers[0].kernal", "allowed here: conv, kernel, stride"),
    ([{"pool": 2}], "model.layers[0]", "expected a layer with one of conv (channels) or linear (size)"),
    ([{"conv": 8, "beta": [0.5, 0.6]}], "model.layers[0].beta", "got a list"),
])
def test_layers_that_do_not_fit_are_errors_naming_the_layer(layers, key, message):
    with pytest.raises(ConfigError) as error:
        parse_model({"layers": layers}, "model", "net.yaml")
    assert error.value.key == key and message in str(error.value) and "net.yaml" in str(error.value)


def test_hidden_and_layers_together_are_an_error_naming_both():
    with pytest.raises(ConfigError, match="give hidden .* or layers, not both") as error:
        parse_model({"hidden": [10], "layers": [{"linear": 10}]}, "model", "net.yaml")
    assert error.value.related == ("model.hidden",)


def test_conv_network_runs_each_convolution_once_over_all_steps():
    cfg = parse_model({"layers": [*TUTORIAL6, {"linear": 20}], "neuron": {"beta": 0.5},
                       "readout": "membrane", "output": {"reset": "none"}}, "model", "t")
    net = Network(cfg, time_steps=6)
    batches = []
    for conv in net.linears[:2]:
        conv.register_forward_hook(lambda module, inputs, out: batches.append(inputs[0].shape[0]))
    out = net(torch.rand(3, 784), record=True)  # direct input: the first convolution once per image
    assert batches == [3, 6 * 3]  # then the second over all steps at once (time x batch)
    assert out.logits.shape == (3, 10)
    assert [r.shape for r in out.recorded] == [(6, 3, 784), (6, 3, 1728), (6, 3, 1024), (6, 3, 20), (6, 3, 10)]
    assert out.spike_counts.shape == (4,)
    batches.clear()
    net((torch.rand(6, 3, 784) < 0.3).float())  # spike input: both convolutions over all steps at once
    assert batches == [18, 18]


def test_per_channel_beta_and_threshold_learn_in_conv_layers():
    cfg = parse_model({"layers": [{"conv": 4, "kernel": 3, "pool": 2, "learn_beta": True, "learn_threshold": True}],
                       "readout": "rate"}, "model", "t")
    net = Network(cfg, time_steps=5)
    assert net.neurons[0].beta.shape == (4, 1, 1) and net.neurons[0].threshold.shape == (4, 1, 1)
    x = torch.rand(8, 784) * 3
    loss = torch.nn.functional.cross_entropy(net(x).logits, torch.randint(0, 10, (8,)))
    loss.backward()
    assert net.neurons[0].beta.grad.abs().sum() > 0 and net.neurons[0].threshold.grad.abs().sum() > 0
    assert net.linears[0].weight.grad.abs().sum() > 0


def test_resolved_conv_config_parses_back_to_the_same_network():
    data = load_yaml(REPO / "configs" / "snntorch_csnn.yaml")
    cfg = parse_train(data, "snntorch_csnn.yaml")
    again = parse_train(yaml.safe_load(yaml.safe_dump(config_to_dict(cfg))), "resolved")
    assert config_to_dict(again) == config_to_dict(cfg)
    assert again.model.shapes == [(12, 12, 12), (64, 4, 4)]


def write_image_set(root: Path, folder: str, train: int, test: int, seed: int = 0) -> None:
    """A small data set in torchvision's raw layout: IDX files of 28 x 28 bytes and their labels."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for part, count in (("train", train), ("t10k", test)):
        labels = np.arange(count) % 10
        images = np.zeros((count, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):  # a bright bar whose row says the class, plus noise
            images[i, 2 + 2 * label:4 + 2 * label, 4:24] = 255
            images[i] |= (rng.random((28, 28)) < 0.05).astype(np.uint8) * 90
        write_idx(raw / f"{part}-images-idx3-ubyte", images)
        write_idx(raw / f"{part}-labels-idx1-ubyte", labels.astype(np.uint8))


@pytest.mark.parametrize("dataset,folder", [("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")])
def test_fashion_mnist_and_kmnist_load_from_torchvisions_layout(tmp_path, dataset, folder):
    write_image_set(tmp_path, folder, train=40, test=20)
    train, test = load_images(tmp_path, dataset)
    assert train.images.shape == (40, 28, 28) and test.images.shape == (20, 28, 28)
    assert train.labels.dtype == torch.int64 and int(train.labels[13]) == 3


def test_a_missing_data_set_names_the_folder_and_the_download_option(tmp_path):
    with pytest.raises(DataError, match=r"Fashion-MNIST not found in .*FashionMNIST/raw.*data.download: true"):
        load_images(tmp_path, "fashion_mnist")


def test_conv_network_trains_on_fashion_mnist_files_end_to_end(tmp_path):
    """The user's path: a conv config, `snnrun train` on a data set in its real file format, then eval."""
    write_image_set(tmp_path / "data", "FashionMNIST", train=600, test=100)
    config = {"name": "conv-files", "device": "cpu",
              "data": {"dataset": "fashion_mnist", "root": str(tmp_path / "data"), "val_size": 100},
              "model": {"layers": [{"conv": 4, "kernel": 5, "pool": 2}], "neuron": {"beta": 0.5},
                        "readout": "membrane", "output": {"reset": "none"}},
              "encoding": {"kind": "direct", "time_steps": 4},
              "train": {"epochs": 2, "batch_size": 50, "lr": 0.01}}
    path = tmp_path / "conv.yaml"
    path.write_text(yaml.safe_dump(config))
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "runs")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5  # ten classes told apart by a bar's row
    for name in ("curves.png", "raster.png", "membrane.png", "kernels.png", "feature_maps.png", "config.yaml"):
        assert (folder / name).is_file(), name
    assert "layers" in load_yaml(folder / "config.yaml")["model"]
    result = runner.invoke(app, ["eval", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(next((folder / "eval").glob("*/eval.json")).read_text())
    assert set(report["spikes_per_sample"]) == {"hidden1", "output"}
    assert report["synaptic_operations_per_inference"]["input_dense_macs"] == 24 * 24 * 4 * 25
    export = runner.invoke(app, ["export", str(folder), "--output", str(tmp_path / "net.nir")])
    # the net max-pools (the default pool kind), and NIR has no max-pooling node: a clear error naming the layer
    assert export.exit_code == 2 and "layer 1 max-pools" in export.output and "pool_kind: avg" in export.output
    assert "Traceback" not in export.output and not (tmp_path / "net.nir").exists()


@needs_mnist
def test_snntorch_tutorial_6_config_trains_on_mnist(tmp_path):
    result = runner.invoke(app, ["train", str(REPO / "configs" / "snntorch_csnn.yaml"), "--out", str(tmp_path),
                                 "--set", f"data.root={DATA}", "--set", "train.subset.train=1280",
                                 "--set", "train.subset.test=500", "--set", "encoding.time_steps=10",
                                 "--set", "data.val_size=500", "--set", "train.epochs=3", "--device", "cpu"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((Path(result.output.strip().splitlines()[-1]) / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5


def test_ce_rate_steps_is_snntorchs_ce_rate_loss():
    from snnrun.network import NetworkOutput
    from snnrun.schema import TrainSettings
    from snnrun.training import loss_of

    spikes = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])  # two steps, one sample, two classes; label 0
    out = NetworkOutput(spikes.sum(0), spikes, None, torch.zeros(1))
    hand = (-np.log(np.e / (np.e + 1)) + np.log(2)) / 2  # step 1: logits (1, 0); step 2: (0, 0)
    assert float(loss_of(out, torch.tensor([0]), TrainSettings(loss="ce_rate_steps"), 2)) == pytest.approx(hand)
    functional = pytest.importorskip("snntorch.functional", reason="snntorch (the peers extra) is not installed")
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(7, 5, 10, generator=g) < 0.3).float()
    labels = torch.randint(0, 10, (5,), generator=g)
    ours = loss_of(NetworkOutput(spikes.sum(0), spikes, None, torch.zeros(1)), labels,
                   TrainSettings(loss="ce_rate_steps"), 7)
    assert float(ours) == pytest.approx(float(functional.ce_rate_loss()(spikes, labels)), rel=1e-6)


def test_conv_plots_stay_small_whatever_the_channels_and_steps(tmp_path):
    from PIL import Image

    from snnrun import plots

    spikes = np.random.default_rng(0).random((500, 64, 12, 12)) < 0.1
    path = plots.feature_maps(spikes, np.zeros((28, 28)), 3, tmp_path / "maps.png")
    kernels = plots.conv_kernels(np.random.default_rng(1).normal(size=(200, 3, 5, 5)), tmp_path / "kernels.png")
    for file, most in ((path, (1400, 2000)), (kernels, (1400, 1400))):
        width, height = Image.open(file).size
        assert width <= most[0] and height <= most[1], (file.name, width, height)
