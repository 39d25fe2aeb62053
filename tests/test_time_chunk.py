"""train.time_chunk: the forward in chunks of steps, recomputed in the backward pass (gradient checkpointing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from snnrun.network import Network
from snnrun.schema import parse_model


def _pair(model: dict, steps: int, chunk: int, seed: int = 0) -> tuple[Network, Network]:
    cfg = parse_model(model, "model", None)
    torch.manual_seed(seed)
    whole = Network(cfg, steps)
    chunked = Network(cfg, steps, time_chunk=chunk)
    chunked.load_state_dict(whole.state_dict())
    return whole.train(), chunked.train()


def _loss_and_grads(net: Network, x: torch.Tensor, seed: int):
    torch.manual_seed(seed)  # the same dropout masks for both
    out = net(x)
    loss = torch.nn.functional.cross_entropy(out.logits, torch.arange(x.shape[-2 if x.dim() == 3 else 0]) % 10)
    if out.membrane is not None:
        loss = loss + out.membrane.square().mean()
    net.zero_grad()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}, out


@pytest.mark.parametrize("model", [
    {"hidden": [40, 30], "readout": "rate"},
    {"hidden": [40], "readout": "membrane", "neuron": {"model": "synaptic", "reset": "zero"}},
    {"hidden": [{"size": 40, "dropout": 0.3}], "readout": "mean_current", "neuron": {"reset_delay": False}},
    {"hidden": [40], "readout": "membrane", "neuron": {"learn_beta": True, "learn_threshold": True}},
    {"layers": [{"conv": 3, "kernel": 5, "pool": 2}, {"linear": 20}], "readout": "rate"},
])
def test_chunked_forward_gives_the_loss_and_gradients_of_the_whole(model):
    """23 steps in chunks of 5 (the last one short): the same loss, spikes and gradients as the whole forward."""
    steps = 23
    whole, chunked = _pair(model, steps, 5)
    torch.manual_seed(1)
    x = (torch.rand(steps, 8, 784) < 0.2).float()
    loss_a, grads_a, out_a = _loss_and_grads(whole, x, seed=7)
    loss_b, grads_b, out_b = _loss_and_grads(chunked, x, seed=7)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    if out_a.spikes is not None:
        assert torch.equal(out_b.spikes, out_a.spikes)
    torch.testing.assert_close(out_b.spike_counts, out_a.spike_counts)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        _close(grads_b[name], grads_a[name], name)


def _close(got: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Equal to float32 rounding of sums taken in another order: within 1e-4 relative, or 1e-5 of the gradient's
    largest entry (an entry that is a small difference of large terms keeps only the large terms' rounding; with
    2 threads one weight gradient of max 9.67 differed by 3.1e-5 between the whole and the chunked forward)."""
    scale = float(expected.abs().max().clamp(min=1.0))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_direct_input_is_chunked_too():
    whole, chunked = _pair({"hidden": [30], "readout": "membrane"}, 12, 4)
    x = torch.rand(6, 784)
    loss_a, grads_a, _ = _loss_and_grads(whole, x, seed=3)
    loss_b, grads_b, _ = _loss_and_grads(chunked, x, seed=3)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-5)
    for name in grads_a:
        _close(grads_b[name], grads_a[name], name)


def test_eval_and_recording_run_whole():
    whole, chunked = _pair({"hidden": [30]}, 12, 4)
    x = (torch.rand(12, 3, 784) < 0.2).float()
    with torch.no_grad():
        assert torch.equal(chunked.eval()(x, record=True).logits, whole.eval()(x, record=True).logits)


def test_time_chunk_lowers_the_peak_memory_of_an_event_data_run(tmp_path):
    """N-MNIST-shaped recordings in N-MNIST's file format, 100 steps, a convolution: the same training with
    train.time_chunk: 10 records a lower peak memory in summary.json (and its run goes end to end)."""
    pytest.importorskip("tonic")
    from test_event_data import write_nmnist

    write_nmnist(tmp_path / "data", per_class=7, test_per_class=1)
    cfg = {"name": "chunk", "device": "cpu", "threads": 1,
           "data": {"dataset": "nmnist", "root": str(tmp_path / "data"), "val_size": 5},
           "model": {"layers": [{"conv": 16, "kernel": 5, "pool": 2}, {"linear": 32}]},
           "encoding": {"kind": "events", "time_steps": 100},
           "train": {"epochs": 1, "batch_size": 64, "eval_batch_size": 16}}
    # 16 channels: the activations kept for the backward pass (peaks 2.36 GB unchunked, 1.32 GB chunked here) must
    # dwarf the ~0.8 GB the process holds anyway (torch, tonic, the data), which varies by a few hundred MB a run
    peaks = {}
    for chunk in (None, 10):
        path = tmp_path / f"chunk{chunk}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "train": {**cfg["train"], "time_chunk": chunk}}))
        out = subprocess.run([sys.executable, "-m", "snnrun", "train", str(path), "--out", str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        folder = Path(out.stdout.strip().splitlines()[-1])
        peaks[chunk] = json.loads((folder / "summary.json").read_text())["peak_memory_mb"]
    assert peaks[10] < 0.8 * peaks[None], peaks
