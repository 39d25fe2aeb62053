"""NIR export and import: a trained run survives the round trip bit for bit, every neuron kind and readout maps
back to itself, convolutional networks (Conv2d, AvgPool2d/SumPool2d, Flatten) too, snnTorch's NIR import runs
our files to the same output spikes, and foreign graphs get a clear error."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from snnrun import nir_graph
from snnrun.cli import app
from snnrun.data import available
from snnrun.network import Network
from snnrun.schema import parse_model

nir = pytest.importorskip("nir", reason="the nir extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
runner = CliRunner()
needs_mnist = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared: run `make data`")
ENCODING = {"encoding": {"kind": "rate", "time_steps": 12, "gain": 1.0}}


def _outputs(model: Network, x: torch.Tensor):
    with torch.no_grad():
        out = model(x, record=True)
    return out.logits, [spikes for spikes in out.recorded[1:]], out.membrane


@pytest.mark.parametrize("model_data", [
    {"hidden": [48], "neuron": {"beta": 0.9, "reset": "subtract"}, "output": {"reset": "none"},
     "readout": "membrane"},  # smoke / mnist: snnTorch's delayed subtract reset, LI readout
    {"hidden": [32, 24], "neuron": {"beta": 0.8, "reset": "zero", "reset_delay": False}, "readout": "rate"},
    {"hidden": [40], "neuron": {"model": "synaptic", "alpha": 0.7, "beta": 0.85}, "readout": "rate"},
    {"hidden": [40], "neuron": {"model": "synaptic", "alpha": 0.6, "beta": 0.95}, "output": {"reset": "none"},
     "readout": "membrane", "membrane_reduce": "max"},
    {"hidden": [36], "neuron": {"beta": 0.9, "learn_beta": True, "learn_threshold": True},
     "readout": "mean_current"},
])
def test_every_neuron_kind_and_readout_round_trips_to_the_same_outputs(tmp_path, model_data):
    torch.manual_seed(3)
    model = Network(parse_model(model_data, "model", "test"), 12)
    with torch.no_grad():
        for linear in model.linears:
            linear.weight.mul_(3)  # enough drive that every layer spikes
        for lif in [*model.neurons, model.output_neurons]:
            if lif is not None and lif.beta.dim():  # learned per-neuron decays and thresholds
                lif.beta.uniform_(0.5, 0.99)
                lif.threshold.uniform_(0.5, 1.5)
    nir_graph.write(nir_graph.to_nir(model, ENCODING), tmp_path / "m.nir")
    config, state = nir_graph.from_nir(nir_graph.read(tmp_path / "m.nir"), "m.nir")
    back = Network(parse_model(config["model"], "model", "m.nir"), config["encoding"]["time_steps"])
    full = back.state_dict()
    full.update(state)
    back.load_state_dict(full)
    assert config["encoding"] == ENCODING["encoding"]
    x = (torch.rand(12, 16, 784) < 0.2).float()
    (logits, spikes, membrane), (logits2, spikes2, membrane2) = _outputs(model, x), _outputs(back, x)
    assert all(s.sum() > 0 for s in spikes)
    assert all(torch.equal(a, b) for a, b in zip(spikes, spikes2, strict=True))
    assert torch.equal(logits, logits2)
    assert (membrane is None and membrane2 is None) or torch.equal(membrane, membrane2)


def test_graph_states_dt_and_tau_from_beta(tmp_path):
    model = Network(parse_model({"hidden": [8], "neuron": {"beta": 0.9}, "readout": "rate"}, "model", "t"), 5)
    graph = nir_graph.to_nir(model, ENCODING, dt=1e-3)
    assert graph.metadata["dt"] == 1e-3 and graph.metadata["time_steps"] == 12
    lif = graph.nodes["lif1"]
    np.testing.assert_allclose(lif.tau, 1e-3 / (1 - np.float32(0.9)))  # forward Euler: beta = 1 - dt/tau
    np.testing.assert_allclose(lif.r * 1e-3 / lif.tau, 1.0)  # one step adds the input current unscaled
    assert lif.metadata == {"reset": "subtract", "reset_delay": True} and np.all(lif.v_reset == 0)


@needs_mnist
def test_trained_smoke_run_exports_imports_and_evaluates_identically(in_tmp):
    result = runner.invoke(app, ["train", "configs/smoke.yaml", "--set", f"data.root={DATA}", "--device", "cpu",
                                 "--set", "train.subset.test=300"])
    assert result.exit_code == 0, result.output
    run = Path(result.output.strip().splitlines()[-1])
    result = runner.invoke(app, ["export", str(run), "--format", "nir"])
    assert result.exit_code == 0, result.output
    exported = Path(result.output.strip().splitlines()[-1])
    assert exported == run / "model.nir" and exported.is_file()
    result = runner.invoke(app, ["import", str(exported), "--out", "imported", "--set", f"data.root={DATA}",
                                 "--set", "train.subset.test=300"])
    assert result.exit_code == 0, result.output
    imported = Path(result.output.strip().splitlines()[-1])
    reports = []
    for folder in (run, imported):
        result = runner.invoke(app, ["eval", str(folder)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads((Path(result.output.strip().splitlines()[-1]) / "eval.json").read_text()))
    original, again = reports
    assert again["confusion"] == original["confusion"]  # the same prediction for every test image
    assert again["spikes_per_sample"] == original["spikes_per_sample"]
    assert again["accuracy"] == original["accuracy"] > 0.8


def test_unsupported_node_is_named_with_exit_2(tmp_path):
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([4])}),
        "delay": nir.Delay(delay=np.ones(4)),
        "fc": nir.Affine(weight=np.zeros((2, 4)), bias=np.zeros(2)),
        "output": nir.Output(output_type={"output": np.array([2])})},
        edges=[("input", "delay"), ("delay", "fc"), ("fc", "output")], type_check=False)
    nir.write(tmp_path / "delay.nir", graph)
    result = runner.invoke(app, ["import", str(tmp_path / "delay.nir"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "node 'delay' is a Delay, which snnrun does not support" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()
    # a convolution without neurons after it is no layer snnrun builds: the chain is named
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([1, 28, 28])}),
        "conv": nir.Conv2d(input_shape=(28, 28), weight=np.zeros((2, 1, 3, 3)), stride=1, padding=0, dilation=1,
                           groups=1, bias=np.zeros(2)),
        "output": nir.Output(output_type={"output": np.array([2, 26, 26])})},
        edges=[("input", "conv"), ("conv", "output")], type_check=False)
    nir.write(tmp_path / "conv.nir", graph)
    result = runner.invoke(app, ["import", str(tmp_path / "conv.nir"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "the chain Input -> Conv2d -> Output is not one snnrun builds" in " ".join(result.output.split())
    (tmp_path / "junk.nir").write_bytes(b"not hdf5 at all")
    result = runner.invoke(app, ["import", str(tmp_path / "junk.nir")])
    assert result.exit_code == 2 and "not a NIR graph" in result.output


def test_snntorch_imports_our_graph_to_the_same_output_spikes(tmp_path):
    """snnTorch's NIR import fixes dt = 1e-4 s (our default) and builds neurons that reset to zero in the step that
    fires: a network trained with reset: zero and reset_delay: false is the same network there. (Our default
    subtract reset, one step late like snnTorch's own default, has no NIR field: snnTorch would read it as zero.)"""
    pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(0)
    cfg = parse_model({"hidden": [64], "neuron": {"beta": 0.9, "reset": "zero", "reset_delay": False},
                       "output": {"reset": "zero"}, "readout": "rate"}, "model", "t")
    model = Network(cfg, 10)
    with torch.no_grad():
        model.linears[0].weight.mul_(4)
    nir_graph.write(nir_graph.to_nir(model, ENCODING), tmp_path / "m.nir")
    theirs = import_from_nir(nir.read(tmp_path / "m.nir"))
    images = torch.rand(6, 784)  # a few digit-sized direct inputs
    snntorch.utils.reset(theirs)
    with torch.no_grad():
        steps = [theirs(images)[0] for _ in range(10)]
        ours = model(images).spikes
    assert ours.sum() > 10
    assert torch.equal(torch.stack(steps), ours)


# --------------------------------------------------------------------------- convolutional networks

CONV_NETS = [
    # avg-pooled leaky convolutions with per-channel learned beta and threshold, a dense layer, an LI readout
    {"layers": [{"conv": 4, "kernel": 3, "padding": 1, "pool": 2, "pool_kind": "avg", "learn_beta": True,
                 "learn_threshold": True},
                {"conv": 6, "kernel": 3, "stride": 2, "pool": None},
                {"linear": 16}],
     "neuron": {"beta": 0.9, "reset": "subtract"}, "output": {"reset": "none"}, "readout": "membrane"},
    # synaptic convolutions straight into the readout, rate readout, zero reset
    {"layers": [{"conv": 5, "kernel": 5, "pool": 2, "pool_kind": "avg"}],
     "neuron": {"model": "synaptic", "alpha": 0.7, "beta": 0.85, "reset": "zero", "reset_delay": False},
     "readout": "rate"},
]


def _conv_model(model_data: dict, steps: int = 12) -> Network:
    torch.manual_seed(5)
    model = Network(parse_model({"input_shape": [2, 12, 12], **model_data}, "model", "test", (2, 12, 12)), steps)
    with torch.no_grad():
        for synapses in model.linears:
            synapses.weight.mul_(3)  # enough drive that every layer spikes
        for lif in model.neurons:
            if lif.beta.dim():
                lif.beta.uniform_(0.5, 0.99)
                lif.threshold.uniform_(0.5, 1.5)
    return model


def _imported(graph_path: Path) -> tuple[Network, dict]:
    config, state = nir_graph.from_nir(nir_graph.read(graph_path), graph_path.name)
    shape = tuple(config["model"].get("input_shape") or [config["model"]["input_size"]])
    back = Network(parse_model(config["model"], "model", graph_path.name, shape), config["encoding"]["time_steps"])
    full = back.state_dict()
    assert set(state) <= set(full)
    full.update(state)
    back.load_state_dict(full)
    return back, config


@pytest.mark.parametrize("model_data", CONV_NETS)
def test_conv_networks_round_trip_to_the_same_outputs(tmp_path, model_data):
    model = _conv_model(model_data)
    graph = nir_graph.to_nir(model, {**ENCODING, "data": {"dataset": "nmnist"}})
    kinds = [type(node).__name__ for node in graph.nodes.values()]
    assert kinds[:4] == ["Input", "Conv2d", "AvgPool2d", "LIF" if "model" not in model_data["neuron"] else
                         "CubaLIF"]
    assert "Flatten" in kinds and kinds.index("Flatten") < kinds.index("Affine")
    conv_neurons = graph.nodes["lif1"]
    assert np.asarray(conv_neurons.v_threshold).shape == tuple(model.cfg.shapes[0])  # one value per neuron
    nir_graph.write(graph, tmp_path / "conv.nir")
    back, config = _imported(tmp_path / "conv.nir")
    assert config["data"] == {"dataset": "nmnist"}
    def structure(cfg):  # (a learned beta's starting value is not part of the graph)
        return [replace(layer, neuron=None) for layer in cfg.hidden], cfg.shapes

    assert structure(back.cfg) == structure(model.cfg)
    x = (torch.rand(12, 8, 2 * 12 * 12) < 0.3).float()
    (logits, spikes, membrane), (logits2, spikes2, membrane2) = _outputs(model, x), _outputs(back, x)
    assert all(s.sum() > 0 for s in spikes)
    assert all(torch.equal(a, b) for a, b in zip(spikes, spikes2, strict=True))
    assert torch.equal(logits, logits2)
    assert (membrane is None and membrane2 is None) or torch.equal(membrane, membrane2)


def test_sum_pooling_imports_as_average_pooling_with_the_factor_in_the_weights(tmp_path):
    """SumPool2d over k x k is k² times AvgPool2d, and pooling is linear in the convolution's current: a graph
    with the sum and the convolution's weights divided by k² is the same network."""
    model = _conv_model(CONV_NETS[1])
    graph = nir_graph.to_nir(model, ENCODING)
    pool, conv = graph.nodes["pool1"], graph.nodes["conv1"]
    graph.nodes["pool1"] = nir.SumPool2d(kernel_size=pool.kernel_size, stride=pool.stride, padding=pool.padding)
    conv.weight, conv.bias = conv.weight / 4, conv.bias / 4
    nir_graph.write(graph, tmp_path / "sum.nir")
    back, config = _imported(tmp_path / "sum.nir")
    assert config["model"]["layers"][0]["pool_kind"] == "avg" and config["model"]["layers"][0]["pool"] == 2
    x = (torch.rand(12, 8, 2 * 12 * 12) < 0.3).float()
    (_, spikes, _), (_, spikes2, _) = _outputs(model, x), _outputs(back, x)
    assert spikes[-1].sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(spikes, spikes2, strict=True))


def test_max_pooling_is_refused_at_export_naming_the_layer():
    model = _conv_model({"layers": [{"conv": 4, "kernel": 3}, {"conv": 4, "kernel": 3, "pool": 2}],
                         "readout": "rate"})
    with pytest.raises(nir_graph.UserError, match="layer 2 max-pools its current, and NIR has no max-pooling node"):
        nir_graph.to_nir(model, ENCODING)


def test_conv_neurons_must_share_their_values_within_a_channel(tmp_path):
    model = _conv_model(CONV_NETS[0])
    graph = nir_graph.to_nir(model, ENCODING)
    threshold = np.array(graph.nodes["lif1"].v_threshold)
    threshold[0, 0, 1] += 0.25
    graph.nodes["lif1"].v_threshold = threshold
    nir_graph.write(graph, tmp_path / "odd.nir")
    with pytest.raises(nir_graph.NIRFileError, match="v_threshold differs between the positions of a channel"):
        nir_graph.from_nir(nir_graph.read(tmp_path / "odd.nir"), "odd.nir")


def test_snntorch_imports_our_conv_graph_to_the_same_output_spikes(tmp_path):
    """snnTorch builds Conv2d, AvgPool2d, Flatten and Leaky modules from our file; fed one sample at a time
    (NIR's shapes have no batch, so Flatten(start_dim=0) flattens the sample), it spikes as snnrun does."""
    pytest.importorskip("snntorch")
    pytest.importorskip("nirtorch")
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    model = _conv_model({"layers": [{"conv": 4, "kernel": 3, "padding": 1, "pool": 2, "pool_kind": "avg"},
                                    {"linear": 24}],
                         "neuron": {"beta": 0.9, "reset": "zero", "reset_delay": False},
                         "output": {"reset": "zero"}, "readout": "rate"}, steps=10)
    nir_graph.write(nir_graph.to_nir(model, ENCODING), tmp_path / "conv.nir")
    theirs = import_from_nir(nir.read(tmp_path / "conv.nir"))
    images = torch.rand(3, 2, 12, 12) * 2  # direct inputs
    with torch.no_grad():
        ours = model(images.flatten(1)).spikes
        for sample, image in enumerate(images):
            snntorch.utils.reset(theirs)
            steps = [theirs(image)[0] for _ in range(10)]
            assert torch.equal(torch.stack(steps), ours[:, sample])
    assert ours.sum() > 10


def test_trained_conv_run_exports_imports_and_evaluates_identically(tmp_path):
    """Through the commands a user runs: train a small avg-pooled conv net on Fashion-MNIST files, export, import,
    evaluate both: the same prediction for every test image."""
    from test_conv import write_image_set

    write_image_set(tmp_path / "data", "FashionMNIST", train=600, test=200)
    config = tmp_path / "conv.yaml"
    config.write_text(
        "data: {dataset: fashion_mnist, root: %s, val_size: 100}\n"
        "model:\n  layers:\n    - {conv: 6, kernel: 5, pool: 2, pool_kind: avg}\n    - {linear: 32}\n"
        "  readout: rate\n"
        "encoding: {kind: rate, time_steps: 8}\n"
        "train: {epochs: 1, batch_size: 50, lr: 0.005}\n" % (tmp_path / "data"))
    result = runner.invoke(app, ["train", str(config), "--out", str(tmp_path / "runs"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    run = Path(result.output.strip().splitlines()[-1])
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert "Conv2d -> AvgPool2d -> LIF -> Flatten -> Affine" in " ".join(result.output.split())
    result = runner.invoke(app, ["import", str(run / "model.nir"), "--out", str(tmp_path / "imported"),
                                 "--set", f"data.root={tmp_path / 'data'}"])
    assert result.exit_code == 0, result.output
    imported = Path(result.output.strip().splitlines()[-1])
    reports = []
    for folder in (run, imported):
        result = runner.invoke(app, ["eval", str(folder)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads((Path(result.output.strip().splitlines()[-1]) / "eval.json").read_text()))
    original, again = reports
    assert again["confusion"] == original["confusion"]
    assert again["spikes_per_sample"] == original["spikes_per_sample"]
