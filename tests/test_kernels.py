"""The compiled kernels (snnrun/neurons/kernels.py) against the torch step functions, hand-computed values and
the engine rule; the CLI's `engine` key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from snnrun import neurons
from snnrun.neurons import engine_for
from snnrun.schema import parse_simulation
from snnrun.simulation import simulate

pytest.importorskip("numba", reason="the compiled kernels need numba")

BLOCK = 2048
CASES = [
    ("lif", {"method": "exact"}),
    ("lif", {"method": "euler"}),
    ("lif", {"method": "exact", "refractory_ms": 0.0}),
    ("lif", {"method": "exact", "tau_ms": 0.05}),  # decay below 0.5: torch.lerp's other branch
    ("leaky", {"reset": "subtract"}),
    ("leaky", {"reset": "zero"}),
    ("leaky", {"reset": "none"}),
    ("leaky", {"reset": "subtract", "reset_delay": False}),
    ("leaky", {"reset": "zero", "reset_delay": False}),
    ("synaptic", {"reset": "subtract"}),
    ("synaptic", {"reset": "zero", "reset_delay": False}),
    ("synaptic", {"reset": "none"}),
    ("lapicque", {"reset": "subtract"}),
    ("lapicque", {"reset": "zero"}),
]


def _currents(model: str, steps: int, n: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale, offset = {"lif": (3.0, 2.0), "leaky": (0.6, 0.0), "synaptic": (0.25, 0.0), "lapicque": (1.5, 0.0)}[model]
    return torch.rand((steps, n if width else 1), generator=g) * scale + offset


def _params(model: str, keys: dict, dtype=torch.float32):
    section = neurons.MODELS[model].config(**keys)
    return section.parameters("cpu", dtype), section


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("model,keys", CASES)
def test_kernel_matches_the_step_function_bit_for_bit(model, keys, dtype):
    """Two chunks (state carried between them), more neurons than one block and not a multiple of it, per-neuron
    and shared currents: the same spikes, and the same membranes (and synaptic currents) to the last bit."""
    params, section = _params(model, keys, dtype)
    m = neurons.MODELS[model]
    n, steps = BLOCK + 437, 90
    for width in (0, 1):
        currents = _currents(model, 2 * steps, n, width).to(dtype)
        start = torch.zeros(n, dtype=dtype) + section.rest
        ref_state = ker_state = m.initial_state(start.clone())
        for chunk in (currents[:steps], currents[steps:]):
            recorded = 700
            ref = neurons.run(model, chunk.expand(steps, n), params, ref_state, path="step")
            mem = torch.empty((steps, recorded), dtype=dtype)
            syn = torch.empty((steps, recorded), dtype=dtype) if m.has_synaptic_current else None
            ker = neurons.run(model, chunk, params, ker_state, path="kernel", membrane_out=mem, synaptic_out=syn)
            expected = ref.spikes.nonzero()
            assert len(expected) > 0, "the case must fire"
            assert torch.equal(ker.events.long(), expected)
            assert torch.equal(mem, ref.membranes[:, :recorded])
            assert torch.equal(ker.state.membrane, ref.state.membrane)
            if syn is not None:
                assert torch.equal(ker.state.synaptic_current, ref.state.synaptic_current)
            if model == "lif":
                assert torch.equal(ker.state.refractory_left, ref.state.refractory_left.to(torch.int32))
            ref_state, ker_state = ref.state, ker.state


def test_lif_kernel_matches_the_scan_and_brian2_s_hand_values():
    """One lif neuron at 2 nA (v_inf = -45 mV), exact integration: v[t] = v_inf + (v[t-1] - v_inf)*exp(-dt/tau);
    it first exceeds -50 mV once exp(-t/tau) < 1/4, at t = tau*ln 4 = 13.86 ms (step 138, t = 13.9 ms), is reset to
    v_reset (-70 mV) there and held for the 19 steps after (2 ms in all), and the scan agrees."""
    params, section = _params("lif", {"v_reset_mv": -70.0})
    currents = torch.full((400, 1), 2.0)
    state = neurons.MODELS["lif"].initial_state(torch.full((1,), -65.0))
    mem = torch.empty((400, 1))
    ker = neurons.run("lif", currents, params, state, path="kernel", membrane_out=mem)
    decay = np.exp(-0.1 / 10.0)
    v, expected, held = -65.0, [], 0
    for t in range(400):
        if held > 0:
            held -= 1
            continue
        v = -45.0 + (v + 45.0) * decay
        if v > -50.0:
            expected.append(t)
            v, held = -70.0, 19
    assert ker.events[:, 0].tolist() == expected
    assert expected[0] == 138
    assert torch.equal(mem[138:158, 0], torch.full((20,), -70.0))  # held at v_reset for the refractory period
    assert mem[158, 0] > -70.0
    scan_mem = torch.empty((400, 1))
    spikes = torch.empty((400, 1), dtype=torch.bool)
    neurons.run("lif", currents, params, state, path="scan", spikes_out=spikes, membrane_out=scan_mem)
    assert spikes[:, 0].nonzero()[:, 0].tolist() == expected
    assert torch.equal(mem, scan_mem)


def test_a_kernel_leaves_torch_s_threads_as_they_were():
    """numba's OpenMP threading layer sets the process's OpenMP thread count when it runs a parallel loop; torch
    reads that count, so a simulation on the numba engine used to leave torch on numba's threads."""
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            state = neurons.MODELS["leaky"].initial_state(torch.zeros(5000))
            neurons.run("leaky", torch.full((20, 5000), 0.3), neurons.LeakyParameters(0.9, 1.0), state,
                        path="kernel")
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_leaky_kernel_hand_computed():
    """beta 0.5, threshold 1, I = 0.6: U = 0.6, 0.9, 1.05 (spike at step 2), then 0.525 + 0.6 - 1 = 0.125, ..."""
    state = neurons.MODELS["leaky"].initial_state(torch.zeros(1, dtype=torch.float64))
    params = neurons.LeakyParameters(0.5, 1.0)
    mem = torch.empty((5, 1), dtype=torch.float64)
    ker = neurons.run("leaky", torch.full((5, 1), 0.6, dtype=torch.float64), params, state, path="kernel",
                      membrane_out=mem)
    assert mem[:, 0].tolist() == pytest.approx([0.6, 0.9, 1.05, 0.125, 0.6625])
    assert ker.events.tolist() == [[2, 0]]


@pytest.mark.parametrize("model", ["lif", "leaky", "synaptic", "lapicque"])
def test_simulate_on_either_engine_gives_the_same_run(model):
    """Through simulate(): chunks of 64 steps, a Poisson input per neuron, 3,000 neurons: the same events, traces
    and metrics on both engines, and the result says which ran."""
    stimulus = {"kind": "poisson", "p": 0.5, "amplitude": 4.0 if model == "lif" else 0.5}
    results = {}
    for engine in ("torch", "numba"):
        cfg = parse_simulation({"neurons": 3000, "time_steps": 300, "record_neurons": 20, "engine": engine,
                                "neuron": {"model": model}, "stimulus": stimulus}, "test")
        results[engine] = simulate(cfg, chunk_steps=64)
    a, b = results["torch"], results["numba"]
    assert (a.engine, b.engine) == ("torch", "numba")
    assert a.metrics["population"]["total_spikes"] > 100
    np.testing.assert_array_equal(a.spike_steps, b.spike_steps)
    np.testing.assert_array_equal(a.spike_neurons, b.spike_neurons)
    np.testing.assert_array_equal(a.membrane, b.membrane)
    if a.synaptic is not None:
        np.testing.assert_array_equal(a.synaptic, b.synaptic)
    assert a.metrics == b.metrics


def test_engine_rule():
    leaky, _ = _params("leaky", {})
    lif, _ = _params("lif", {})
    cpu = torch.device("cpu")
    assert engine_for("auto", "leaky", leaky, 10**6, cpu) == "torch"  # loading numba would cost more
    assert engine_for("auto", "leaky", leaky, 10**8, cpu) == "numba"
    assert engine_for("auto", "lif", lif, 10**8, cpu) == "torch"  # lif's torch scan is faster: later break-even
    assert engine_for("auto", "lif", lif, 10**9, cpu) == "numba"
    assert engine_for("numba", "leaky", leaky, 10, cpu) == "numba"
    assert engine_for("torch", "leaky", leaky, 10**12, cpu) == "torch"
    per_neuron = neurons.LeakyParameters(torch.tensor([0.9, 0.8]), 1.0)
    assert engine_for("auto", "leaky", per_neuron, 10**12, cpu) == "torch"
    with pytest.raises(ValueError, match="one value per parameter"):
        engine_for("numba", "leaky", per_neuron, 10, cpu)
    with pytest.raises(ValueError, match="CPU"):
        engine_for("numba", "leaky", leaky, 10, torch.device("meta"))


def _simulate(*args):
    from typer.testing import CliRunner

    from snnrun.cli import app

    return CliRunner().invoke(app, ["simulate", *args], catch_exceptions=False)


def test_cli_engine_numba_runs_and_is_recorded(in_tmp):
    result = _simulate("--set", "engine=numba", "--set", "neurons=50")
    assert result.exit_code == 0, result.output
    folder = Path(result.output.strip().splitlines()[-1])
    assert "numba" in result.output  # the table's title names the engine
    assert "engine: numba" in (folder / "config.yaml").read_text()
    assert "(numba engine)" in (folder / "run.log").read_text()
    assert json.loads((folder / "metrics.json").read_text())["engine"] == "numba"


def test_cli_engine_numba_with_per_neuron_values_is_a_config_error(in_tmp):
    result = _simulate("--set", "engine=numba", "--set", "neurons=2", "--set", "neuron.beta=[0.9, 0.8]")
    assert result.exit_code == 2, result.output
    assert "engine" in result.output and "one value per parameter" in result.output
    assert "Traceback" not in result.output
    assert not Path("outputs").exists() or not any(Path("outputs").rglob("config.yaml"))


def test_kernel_cache_goes_where_numba_cache_dir_says(tmp_path):
    """Where the package folder is not writable, numba caches in NUMBA_CACHE_DIR (or the user's cache folder):
    a fresh process compiles the lif kernel into it, and a second one loads it from there."""
    code = ("import torch; from snnrun import neurons\n"
            "p = neurons.MODELS['lif'].config().parameters('cpu', torch.float32)\n"
            "s = neurons.MODELS['lif'].initial_state(torch.full((3,), -65.0))\n"
            "print(len(neurons.run('lif', torch.full((50, 1), 2.0), p, s, path='kernel').events))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
    cached = [p.name for p in tmp_path.rglob("*") if p.suffix in (".nbi", ".nbc")]
    assert any(name.startswith("kernels.lif_chunk") for name in cached), cached
