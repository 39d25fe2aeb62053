"""Physical-unit LIF neurons in training (`model.neuron.model: lif`): the whole-sequence autograd node against
the step function, hand-computed spikes, the surrogate's scaling by the threshold distance, the refractory hold
without gradient, the encodings in nA and Hz, config errors and the CLI end to end."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from test_conv import write_image_set
from typer.testing import CliRunner

from snnrun import encoding, neurons
from snnrun.cli import app
from snnrun.config import ConfigError, load_yaml
from snnrun.network import LIFLayer
from snnrun.neurons.lif import LIFParameters
from snnrun.schema import TrainedLIF, parse_train
from snnrun.surrogate import Surrogate

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()
BRIAN2 = dict(tau_ms=10.0, v_rest_mv=-65.0, v_reset_mv=-65.0, v_thresh_mv=-50.0, r_mohm=1.0, dt_ms=1.0)


def params(refractory_ms=3.0, method="exact", **changes) -> LIFParameters:
    p = {**BRIAN2, **changes}
    return LIFParameters(p["tau_ms"], p["v_rest_mv"], p["v_reset_mv"], p["v_thresh_mv"], refractory_ms,
                         p["r_mohm"], p["dt_ms"], method)


@pytest.mark.parametrize("method,refractory,reset,kind", list(itertools.product(
    ["exact", "euler"], [0.0, 1.0, 3.0], [-65.0, -70.0], ["atan", "fast_sigmoid", "sigmoid", "straight_through"])))
def test_sequence_node_equals_autograd_through_the_step(method, refractory, reset, kind):
    """Spikes, membranes and the gradient of both (alone and together) as autograd through `lif_step` gives them."""
    torch.manual_seed(0)
    p = params(refractory, method, v_reset_mv=reset, r_mohm=1.0 if method == "exact" else 2.0)
    x = (torch.rand(30, 4, 7, dtype=torch.float64) * 40).requires_grad_()
    spike_fn = Surrogate(kind, 2.0)
    assert neurons.path_for("lif", p, None, spike_fn, False) == "sequence"
    fast = neurons.run("lif", x, p, spike_fn=spike_fn)
    step = neurons.run("lif", x, p, spike_fn=spike_fn, path="step")
    assert torch.equal(fast.spikes, step.spikes) and fast.spikes.sum() > 20
    torch.testing.assert_close(fast.membranes, step.membranes)
    g_spikes, g_mem = torch.randn_like(x), torch.randn_like(x)
    for loss in (lambda t: (t.spikes * g_spikes).sum(), lambda t: (t.membranes * g_mem).sum(),
                 lambda t: (t.spikes * g_spikes).sum() + (t.membranes * g_mem).sum()):
        got = torch.autograd.grad(loss(fast), x, retain_graph=True)[0]
        want = torch.autograd.grad(loss(step), x, retain_graph=True)[0]
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_spike_times_by_hand_with_the_refractory_hold():
    """20 nA into tau 10 ms, R 1 MOhm from -65 mV: v[n] = -45 - 20 exp(-n/10) passes -50 mV when
    exp(-n/10) < 1/4, n > 10 ln 4 = 13.9, so at the 14th step (index 13); 3 ms refractory holds the next two
    steps at -65 mV and the neuron integrates again from index 16, firing at 16 + 13 = 29, then 45."""
    p = params(3.0)
    current = torch.full((50, 1), 20.0, dtype=torch.float64, requires_grad=True)
    for path in ("sequence", "step"):
        trace = neurons.run("lif", current, p, spike_fn=Surrogate("atan", 2.0), path=path)
        assert torch.nonzero(trace.spikes[:, 0]).flatten().tolist() == [13, 29, 45]
        torch.testing.assert_close(trace.membranes[12, 0], torch.tensor(-45 - 20 * math.exp(-1.3),
                                                                         dtype=torch.float64))
        assert trace.membranes[13:16, 0].tolist() == [-65.0, -65.0, -65.0]  # reset, then held


def test_the_surrogate_sees_the_membrane_in_threshold_distances():
    """One step from rest with current I: pre = -65 + (1 - e^-0.1) R I, and dS/dI = atan'((pre + 50)/15)/15 *
    (1 - e^-0.1) R, where atan'(x) = (slope/2) / (1 + (pi/2 slope x)^2)."""
    p = params(0.0)
    current = torch.tensor([[40.0]], dtype=torch.float64, requires_grad=True)
    spikes = neurons.run("lif", current, p, spike_fn=Surrogate("atan", 2.0)).spikes
    (grad,) = torch.autograd.grad(spikes.sum(), current)
    share = 1 - math.exp(-0.1)
    x = (-65 + share * 40 + 50) / 15
    assert float(grad) == pytest.approx(1 / (1 + (math.pi * x) ** 2) / 15 * share, rel=1e-12)


def test_the_refractory_hold_carries_no_gradient():
    """Current given while a neuron is held cannot change what it does: its gradient is exactly zero."""
    p = params(5.0)
    current = torch.full((40, 1), 60.0, dtype=torch.float64, requires_grad=True)
    trace = neurons.run("lif", current, p, spike_fn=Surrogate("fast_sigmoid", 5.0))
    fired = torch.nonzero(trace.spikes[:, 0]).flatten().tolist()
    (grad,) = torch.autograd.grad((trace.spikes.sum() + trace.membranes.sum()), current)
    held = [t + k for t in fired for k in range(1, 5) if t + k < 40]
    assert fired and held and all(float(grad[t, 0]) == 0.0 for t in held)
    assert all(float(grad[t, 0]) != 0.0 for t in range(fired[0] + 1))  # before the first spike it flows


def test_a_weight_of_one_from_one_spike_raises_the_membrane_by_the_threshold_distance():
    """The synapses' output is in `unit_current`: w = 1 is Brian2's `v_post += 15*mV`, at any dt."""
    for dt in (1.0, 0.1, 0.5):
        spec = TrainedLIF(**{**BRIAN2, "dt_ms": dt, "refractory_ms": 0.0})
        layer = LIFLayer(1, spec, Surrogate("atan", 2.0))
        _, membrane = layer(torch.tensor([[[0.6]], [[0.0]]], dtype=torch.float64))
        assert float(membrane[0, 0, 0]) == pytest.approx(-65 + 0.6 * 15, abs=1e-9)
        assert float(membrane[1, 0, 0]) == pytest.approx(-65 + 0.6 * 15 * math.exp(-dt / 10), abs=1e-9)


def test_current_encoding_is_brian2s_input_population():
    """Each pixel drives one lif neuron of model.neuron by pixel x gain nA; a full pixel at 50 nA: v[n] = -15 - 50
    e^(-n/10) passes -50 mV at n > 10 ln(50/35) = 3.57 (index 3), then every 4 + 4 steps of 5 ms refractory."""
    p = params(5.0)
    images = torch.tensor([[[255, 0, 77]]], dtype=torch.uint8)
    spikes = encoding.encode(images, "current", 30, 50.0, neurons=p)
    assert spikes.shape == (30, 1, 3)
    assert torch.nonzero(spikes[:, 0, 0]).flatten().tolist() == [3, 11, 19, 27]
    # 77/255 x 50 = 15.1 nA, just above the 15 nA rheobase: v[n] = -49.9 - 15.1 e^(-n/10) passes -50 mV only
    # after n > 10 ln(15.1/0.098) = 50 steps
    assert spikes[:, 0, 1].sum() == 0 and spikes[:, 0, 2].sum() == 0


def test_poisson_encoding_draws_at_the_rate_in_hz():
    p = params(dt_ms=0.5)
    images = torch.full((1, 2000), 255, dtype=torch.uint8)
    spikes = encoding.encode(images, "poisson", 200, 40.0, torch.Generator().manual_seed(0), neurons=p)
    rate = spikes.mean() / (0.5e-3)  # per second
    assert 38 < float(rate) < 42  # 40 Hz, 400,000 draws at p = 0.02


def brian2_config(**changes) -> dict:
    cfg = load_yaml(REPO / "configs" / "brian2_mnist.yaml")
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        cfg[section][key] = value
    return cfg


def test_time_steps_follow_from_duration_and_dt():
    cfg = parse_train(brian2_config(), "brian2_mnist.yaml")
    assert cfg.encoding.time_steps == 50 and cfg.model.neuron.model == "lif"


@pytest.mark.parametrize("changes,key,message", [
    ({"encoding.time_steps": 20}, "encoding.time_steps", "conflicts with encoding.duration_ms"),
    ({"encoding.duration_ms": 50.5}, "encoding.duration_ms", "whole number of model.neuron.dt_ms"),
])
def test_conflicting_or_uneven_durations_are_errors(changes, key, message):
    with pytest.raises(ConfigError, match=message) as error:
        parse_train(brian2_config(**changes), "brian2_mnist.yaml")
    assert error.value.key == key


def test_physical_encodings_need_lif_neurons_and_lif_learns_nothing_but_weights():
    cfg = brian2_config()
    cfg["model"]["neuron"] = {"model": "leaky"}
    with pytest.raises(ConfigError, match="needs model.neuron.model: lif"):
        parse_train(cfg, "t.yaml")
    cfg = brian2_config()
    cfg["model"]["neuron"]["learn_threshold"] = True
    with pytest.raises(ConfigError, match="learn_threshold is not allowed for lif neurons"):
        parse_train(cfg, "t.yaml")


def test_a_config_error_is_exit_2_without_traceback(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(brian2_config(**{"encoding.duration_ms": 50.5})))
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "encoding.duration_ms" in result.output and "Traceback" not in result.output


def test_brian2_experiment_trains_evaluates_and_refuses_nir_export(tmp_path):
    """The user's path on data in the real file format: current-driven input neurons, a trained lif layer and lif
    outputs read by spike counts, then eval, and export refused with a reason."""
    write_image_set(tmp_path / "data", "FashionMNIST", train=600, test=100)
    cfg = brian2_config()
    cfg["data"] = {"dataset": "fashion_mnist", "root": str(tmp_path / "data"), "val_size": 100}
    cfg["device"] = "cpu"
    cfg["model"].update(hidden=[64], dropout=0.0)
    cfg["encoding"]["duration_ms"] = 20.0
    cfg["train"].update(epochs=3, batch_size=50, lr=5e-3, augment_shift=0)  # a shift would move the class's bar
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "runs")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.5
    assert load_yaml(folder / "config.yaml")["encoding"]["time_steps"] == 20
    result = runner.invoke(app, ["eval", str(folder)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    export = runner.invoke(app, ["export", str(folder), "--output", str(tmp_path / "net.nir")])
    assert export.exit_code == 2 and "lif neurons" in export.output and "refractory" in export.output
    assert "Traceback" not in export.output and not (tmp_path / "net.nir").exists()
