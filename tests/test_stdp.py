"""Diehl & Cook (2015) with STDP (`learning: stdp`): the compiled network loop by hand and against Brian2, the
classification by hand, resume, the CLI end to end, config errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from snnrun import stdp
from snnrun.cli import app
from snnrun.data import available
from snnrun.neurons.conductance import euler_membrane
from snnrun.schema import STDPConfig, parse_train
from snnrun.training import Callbacks, TrainingInterrupted

DATA = Path(__file__).resolve().parents[1] / "data"
needs_mnist = pytest.mark.skipif(not available(DATA), reason="MNIST not prepared (make data)")


def config(**sections) -> STDPConfig:
    data = {"learning": "stdp", **sections}
    return parse_train(data, "test")


def constants(cfg: STDPConfig, **changes):
    return stdp.constants(cfg)._replace(**changes)


def events(pairs):
    """(step, input) pairs in step order as the kernel's event arrays."""
    pairs = sorted(pairs)
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64), len(pairs)


# --------------------------------------------------------------------------- by hand


def test_euler_membrane_by_hand():
    # -65 + 0.5/100 * ((-65 + 65) + 0.5*(0 + 65) + 0.2*(-100 + 65)) = -65 + 0.005 * 25.5
    assert euler_membrane(-65.0, 0.5, 0.2, -65.0, 0.0, -100.0, 0.005) == pytest.approx(-64.8725, abs=1e-12)


def test_membrane_step_is_split_where_euler_would_overshoot():
    from snnrun.stdp_kernel import _membrane

    # dt/tau * (1 + ge + gi) = 0.005 * 31 = 0.155: the plain Euler step
    assert _membrane(-60.0, 10.0, 20.0, -65.0, 0.0, -100.0, 0.005) == euler_membrane(-60.0, 10.0, 20.0, -65.0, 0.0,
                                                                                   -100.0, 0.005)
    # 24 inhibitory spikes of 17 at once: 0.005 * 409 = 2.045 > 2, where one Euler step diverges; three steps of
    # dt/3 instead, each 68 % of the way toward the target (-65 + 408 * -100) / 409 = -99.91 mV, never past it
    v = -50.0
    for _ in range(3):
        v = euler_membrane(v, 0.0, 408.0, -65.0, 0.0, -100.0, 0.005 / 3)
    assert _membrane(-50.0, 0.0, 408.0, -65.0, 0.0, -100.0, 0.005) == pytest.approx(v, abs=1e-12)
    assert -99.91 < v < -98.0
    assert euler_membrane(-50.0, 0.0, 408.0, -65.0, 0.0, -100.0, 0.005) < -150.0  # one Euler step: far past it


def test_stdp_rule_by_hand():
    """One excitatory neuron that fires at steps 0 and 10 (started above threshold, reset above it, refractory
    10 steps); input 1 spikes at step 0, input 0 at step 4. Depression at step 4: nu_pre * post1 = 1e-4 e^-0.1;
    potentiation at step 10: nu_post * pre * post2, with pre = e^-(10-0)*0.5/20 (input 1), e^-(10-4)*0.5/20
    (input 0), and post2 = e^-10*0.5/40. Input 1 arrives in the step of the first spike: its depression sees post1
    before that spike (0: none), and that spike's potentiation does not see it (no earlier pre trace: none)."""
    cfg = config(stdp={"excitatory_neurons": 1})
    c = constants(cfg, present_steps=15, rest_steps=0, e_reset=-45.0, theta_keep=1.0)
    w = np.array([[0.5], [0.25]])
    state = stdp.fresh_state(cfg, w, np.array([20.0]))
    state.v_e[0] = -40.0
    counts = np.zeros(1, np.int32)
    from snnrun.stdp_kernel import present

    nothing = np.zeros((0, 0), np.uint8)
    present(state, c, *events([(0, 1), (4, 0)]), True, counts, nothing, nothing)  # (no delays)
    assert counts[0] == 2 and state.last_e[0] == 10
    post2 = math.exp(-10 * 0.5 / 40)
    expected0 = 0.5 - 1e-4 * math.exp(-4 * 0.5 / 20) + 1e-2 * math.exp(-6 * 0.5 / 20) * post2
    expected1 = 0.25 + 1e-2 * math.exp(-10 * 0.5 / 20) * post2
    assert state.w[:, 0] == pytest.approx([expected0, expected1], abs=1e-15)
    assert state.theta[0] == pytest.approx(20.1, abs=1e-12)  # two spikes of 0.05 mV
    assert state.post1[0] == pytest.approx(math.exp(-4 * 0.5 / 20))  # 4 steps after the spike at step 10


def test_weights_are_normalized_to_the_total_per_neuron():
    from snnrun.stdp_kernel import normalize

    w = np.array([[1.0, 0.0], [3.0, 0.0]])
    normalize(w, 78.0)
    assert w.tolist() == [[19.5, 0.0], [58.5, 0.0]]  # a silent column stays 0


def test_poisson_input_rate():
    from snnrun.stdp_kernel import poisson_events

    np.random.seed(1)  # numba's own stream (seeded from compiled code, see the next line)
    pixels = np.zeros(784, np.uint8)
    pixels[:100] = 255
    pixels[100:200] = 51
    steps = 2000
    ev_step, ev_index = np.empty(steps * 784, np.int64), np.empty(steps * 784, np.int64)
    m = poisson_events(pixels, 63.75, 0.5, steps, ev_step, ev_index)
    per_input = np.bincount(ev_index[:m], minlength=784)
    # p = 63.75 Hz * 0.5 ms = 0.031875 a step at 255; a fifth of that at 51; none where the pixel is 0
    assert per_input[:100].mean() == pytest.approx(0.031875 * steps, rel=0.05)
    assert per_input[100:200].mean() == pytest.approx(0.031875 / 5 * steps, rel=0.1)
    assert per_input[200:].sum() == 0
    assert np.all(np.diff(ev_step[:m]) >= 0)  # in step order


def test_assignment_and_classification_by_hand():
    counts = np.array([[5, 0, 1], [3, 0, 0], [0, 4, 2], [1, 2, 4]])
    labels = np.array([0, 0, 1, 1])
    # mean per class: neuron 0: (4, 0.5) -> 0; neuron 1: (0, 3) -> 1; neuron 2: (0.5, 3) -> 1
    assignments = stdp.assign(counts, labels, 3)
    assert assignments.tolist() == [0, 1, 1]
    silent = stdp.assign(np.array([[0, 1], [0, 2]]), np.array([0, 1]), 2)
    assert silent.tolist() == [-1, 1]
    # image scores: class 0 = neuron 0, class 1 = mean(neurons 1, 2)
    predicted = stdp.classify(np.array([[6, 1, 3], [1, 4, 0], [2, 1, 3]]), assignments, 3)
    assert predicted.tolist() == [0, 1, 0]  # 6 vs 2; 1 vs 2; 2 vs 2: the tie goes to the lower class


# --------------------------------------------------------------------------- against Brian2


@pytest.mark.parametrize("max_delay_steps", [0, 20])
def test_network_and_learning_match_brian2(max_delay_steps):
    """20 inputs with fixed spike trains into 3 excitatory and 3 inhibitory neurons, learning on, 150 ms at
    dt 0.5 ms, without and with synaptic delays of 0-19 steps: Brian2 (forward Euler, the same equations, exact
    trace decay, the input synapses' on-pre code at arrival) and the compiled loop give the same spikes of both
    populations, weights, thetas and membranes, including steps where an input arrives as its target fires."""
    b2 = pytest.importorskip("brian2")
    from brian2 import ms, mV

    rng = np.random.default_rng(3)
    n_in, n, steps, step_ms = 20, 3, 300, 0.5  # (not `dt`: Brian2 would see it in the namespace)
    pairs = sorted({(int(s), int(i)) for i in range(n_in) for s in np.flatnonzero(rng.random(steps) < 0.12)})
    w0 = rng.uniform(0.1, 0.5, (n_in, n))
    delays = rng.integers(0, max_delay_steps, (n_in, n)) if max_delay_steps else np.zeros((n_in, n), np.int64)

    b2.start_scope()
    b2.prefs.codegen.target = "numpy"
    b2.defaultclock.dt = step_ms * ms
    exc = b2.NeuronGroup(n, """dv/dt = ((-65*mV - v) + ge*(0*mV - v) + gi*(-100*mV - v)) / (100*ms) : volt
                               dge/dt = -ge/(1*ms) : 1
                               dgi/dt = -gi/(2*ms) : 1
                               dtheta/dt = -theta/(1e7*ms) : volt
                               post1 : 1
                               post2 : 1""",
                         threshold="v > theta - 20*mV - 52*mV",
                         reset="v = -65*mV; theta += 0.05*mV; post1 = 1.; post2 = 1.",
                         refractory=5 * ms, method="euler")
    # the post traces decay exactly and are set to 1 in the reset, after the synapses: so an arrival in the step
    # its target fires depresses by post1 before the spike, as in the original
    exc.run_regularly("post1 = post1 * exp(-dt/(20*ms)); post2 = post2 * exp(-dt/(40*ms))", when="groups")
    inh = b2.NeuronGroup(n, """dv/dt = ((-60*mV - v) + ge*(0*mV - v) + gi*(-85*mV - v)) / (10*ms) : volt
                                (unless refractory)
                               dge/dt = -ge/(1*ms) : 1
                               dgi/dt = -gi/(2*ms) : 1""",
                         threshold="v > -40*mV", reset="v = -45*mV", refractory=2 * ms, method="euler")
    exc.v, exc.theta, inh.v = -65 * mV, 20 * mV, -60 * mV
    source = b2.SpikeGeneratorGroup(n_in, [p[1] for p in pairs], [p[0] * step_ms for p in pairs] * ms)
    # the pre trace exp(-(t - last arrival)/20 ms), read by the post pathway, which runs first (order -2): it
    # sees the arrivals before this step only, as in the original
    learn = b2.Synapses(source, exc, """w : 1
                                        last : second""",
                        on_pre="ge_post += w; last = t; w = clip(w - 0.0001 * post1_post, 0, 1.0)",
                        on_post="w = clip(w + 0.01 * exp(-(t - last)/(20*ms)) * post2_post, 0, 1.0)")
    learn.connect()
    learn.post.order = -2
    learn.last = -1e6 * ms
    learn.w = w0[learn.i[:], learn.j[:]]
    learn.delay = delays[learn.i[:], learn.j[:]] * step_ms * ms
    to_inh = b2.Synapses(exc, inh, on_pre="ge_post += 10.4")
    to_inh.connect(j="i")
    to_exc = b2.Synapses(inh, exc, on_pre="gi_post += 17.0")
    to_exc.connect(condition="i != j")
    exc_spikes, inh_spikes = b2.SpikeMonitor(exc), b2.SpikeMonitor(inh)
    b2.run(steps * step_ms * ms)

    brian_exc = sorted(zip(np.round(exc_spikes.t / ms / step_ms).astype(int).tolist(), exc_spikes.i[:].tolist(),
                           strict=True))
    brian_inh = sorted(zip(np.round(inh_spikes.t / ms / step_ms).astype(int).tolist(), inh_spikes.i[:].tolist(),
                           strict=True))
    arrivals = {(s + int(delays[i, j]), j) for s, i in pairs for j in range(n)}
    assert len(brian_exc) >= 6 and len(brian_inh) >= 3, "the case must exercise learning and inhibition"
    assert arrivals & set(brian_exc), "the case must have arrivals in the step their target fires"

    cfg = config(stdp={"excitatory_neurons": n, "excitatory": {"v_start_mv": -65.0},
                       "inhibitory": {"v_start_mv": -60.0}})
    state = stdp.fresh_state(cfg, w0.copy(), np.full(n, 20.0), delays)
    from snnrun.stdp_kernel import present

    c = constants(cfg, present_steps=steps, rest_steps=0)
    counts = np.zeros(n, np.int32)
    record_e, record_i = np.zeros((steps, n), np.uint8), np.zeros((steps, n), np.uint8)
    present(state, c, *events(pairs), True, counts, record_e, record_i)
    assert list(zip(*np.nonzero(record_e), strict=True)) == brian_exc
    assert list(zip(*np.nonzero(record_i), strict=True)) == brian_inh
    assert counts.sum() == len(brian_exc)
    brian_w = np.zeros((n_in, n))
    brian_w[learn.i[:], learn.j[:]] = learn.w[:]
    np.testing.assert_allclose(state.w, brian_w, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(state.theta, exc.theta[:] / mV, rtol=1e-9)
    np.testing.assert_allclose(state.v_e, exc.v[:] / mV, rtol=1e-9)
    np.testing.assert_allclose(state.v_i, inh.v[:] / mV, rtol=1e-9)


# --------------------------------------------------------------------------- runs


def small(tmp_path, **train):
    return config(data={"root": str(DATA)}, stdp={"excitatory_neurons": 16},
                  train={"subset": {"train": 600, "test": 200}, "label_images": 600, "window": 250,
                         "checkpoint_every": 250, **train})


@needs_mnist
def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = small(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = stdp.train_stdp(cfg, tmp_path / "a")
    calls = {"n": 0}

    def stop_after_one_block() -> bool:
        calls["n"] += 1
        return calls["n"] == 2

    with pytest.raises(TrainingInterrupted):
        stdp.train_stdp(cfg, tmp_path / "b", Callbacks(should_stop=stop_after_one_block))
    resumed = stdp.train_stdp(cfg, tmp_path / "b", resume=True)
    for summary in (straight, resumed):
        for measured in ("train_seconds", "label_seconds", "test_seconds"):
            summary.pop(measured)
        for record in summary["history"]:
            record.pop("samples_per_s")
    assert resumed == straight
    a = stdp.load_trained(tmp_path / "a" / "checkpoints" / "best.pt")
    b = stdp.load_trained(tmp_path / "b" / "checkpoints" / "best.pt")
    assert np.array_equal(a.w, b.w) and np.array_equal(a.theta, b.theta)
    assert np.array_equal(a.assignments, b.assignments)


@needs_mnist
def test_train_eval_and_plots_through_the_cli(in_tmp):
    cfg = yaml.safe_load((in_tmp / "configs" / "stdp_mnist.yaml").read_text())
    cfg["stdp"]["excitatory_neurons"] = 25
    cfg["data"]["root"] = str(DATA)
    cfg["train"].update({"subset": {"train": 1000, "test": 300}, "label_images": 1000, "window": 500})
    (in_tmp / "small.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "small.yaml", "--out", "runs"])
    assert result.exit_code == 0, result.output
    folder = next((in_tmp / "runs").iterdir())
    summary = json.loads((folder / "summary.json").read_text())
    # 25 neurons after 1,000 digits already classify far above chance (10 %)
    assert summary["test_accuracy"] > 0.4
    assert sum(summary["neurons_per_class"]) + summary["silent_neurons"] == 25
    for name in ("weights.png", "curves.png", "theta.png", "assignments.png", "confusion.png", "raster.png",
                 "metrics.jsonl", "config.yaml", "env.json", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (folder / name).is_file(), name
    assert yaml.safe_load((folder / "config.yaml").read_text())["learning"] == "stdp"
    result = runner.invoke(app, ["eval", str(folder)])
    assert result.exit_code == 0, result.output
    report = json.loads(next((folder / "eval").glob("*/eval.json")).read_text())
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"])  # the same seeded input spikes
    result = runner.invoke(app, ["train", "--resume", str(folder)])
    assert result.exit_code == 2 and "never overwritten" in result.output
    result = runner.invoke(app, ["export", str(folder)])
    assert result.exit_code == 2 and "no NIR form" in result.output
    # a second pass over the digits, in a new folder; the finished run stays as it was
    result = runner.invoke(app, ["train", "--resume", str(folder), "--epochs", "2", "--out", "runs"])
    assert result.exit_code == 0, result.output
    other = next(p for p in (in_tmp / "runs").iterdir() if p != folder)
    assert json.loads((other / "summary.json").read_text())["epochs"] == 2
    last = json.loads((other / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["epoch"], last["images"]) == (2, 2000)
    assert json.loads((folder / "summary.json").read_text()) == summary


@pytest.mark.parametrize(("change", "key"), [
    (["--set", "stdp.plasticity.nu_post=-1"], "stdp.plasticity.nu_post"),
    (["--set", "stdp.excitatory.bogus=1"], "stdp.excitatory.bogus"),
    (["--set", "learning=hebb"], "learning"),
    (["--set", "stdp.input.duration_ms=350.2"], "stdp.input.duration_ms"),
    (["--set", "model.hidden=[100]"], "model"),
    (["--device", "cuda"], "device"),
    (["--tensorboard"], "--tensorboard"),
    (["--nproc", "2"], "--nproc"),
])
def test_config_errors_name_the_key(in_tmp, change, key):
    result = CliRunner().invoke(app, ["train", "configs/stdp_mnist.yaml", *change])
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output
