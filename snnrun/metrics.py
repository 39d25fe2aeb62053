"""Spike-train statistics computed on spike events (or whole (time, neurons) spike tensors) at once."""

from __future__ import annotations

import math

import torch


def spike_train_metrics(spikes: torch.Tensor, dt: float, unit: str) -> dict:
    """`event_metrics` of a boolean (time, neurons) spike tensor."""
    steps, n = spikes.shape
    step_idx, neuron_idx = spikes.nonzero(as_tuple=True)  # ordered by time
    return event_metrics(step_idx, neuron_idx, steps, n, dt, unit)


def event_metrics(step_idx: torch.Tensor, neuron_idx: torch.Tensor, steps: int, n: int, dt: float,
                  unit: str) -> dict:
    """Per-neuron and population statistics of spike events (step, neuron), ordered by step, over `steps` steps
    of `n` neurons (Brian2's SpikeMonitor record: (i, t) pairs).

    Per neuron: spike count, firing rate (Hz when `unit` is "ms" or "s", else spikes per
    step), first spike step and time, mean inter-spike interval (in `unit`) and its
    coefficient of variation (std/mean; null with fewer than two intervals).
    """
    seconds_per_unit = {"ms": 1e-3, "s": 1.0}.get(unit)
    device = neuron_idx.device
    # Events ordered by neuron, then time: consecutive pairs of one neuron give its ISIs.
    neuron_idx, order = torch.sort(neuron_idx.long(), stable=True)
    step_idx = step_idx.long()[order]
    counts = torch.bincount(neuron_idx, minlength=n)
    rate = counts.double() / (steps * dt * (seconds_per_unit or 1.0))
    first = torch.full((n,), -1, dtype=torch.int64, device=device)
    if step_idx.numel():
        first.scatter_reduce_(0, neuron_idx, step_idx, reduce="amin", include_self=False)
    same = neuron_idx[1:] == neuron_idx[:-1]
    isi_steps = (step_idx[1:] - step_idx[:-1])[same]
    owner = neuron_idx[1:][same]
    isi_count = torch.bincount(owner, minlength=n).double()
    isi_sum = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, owner, isi_steps.double())
    mean_steps = isi_sum / isi_count.clamp(min=1)
    # two passes (deviations from each neuron's mean) in whole steps: a regular train's CV is exactly 0
    deviation = isi_steps.double() - mean_steps[owner]
    var = torch.zeros(n, dtype=torch.float64, device=device).index_add_(0, owner, deviation * deviation)
    var = var / isi_count.clamp(min=1)
    cv = var.sqrt() / mean_steps.clamp(min=1e-300)
    mean_isi = mean_steps * dt

    def column(values: torch.Tensor, valid: torch.Tensor | None = None) -> list:
        out = values.cpu().tolist()
        if valid is not None:
            mask = valid.cpu().tolist()
            out = [v if ok else None for v, ok in zip(out, mask, strict=True)]
        return out

    has_spike = counts > 0
    has_isi = isi_count > 0
    rate_unit = "Hz" if seconds_per_unit else "spikes/step"
    per_neuron = {
        "spike_count": column(counts),
        "firing_rate": column(rate),
        "first_spike_step": column(first, has_spike),
        "first_spike_time": column(first.double() * dt, has_spike),
        "mean_isi": column(mean_isi, has_isi),
        "isi_cv": column(cv, isi_count > 1),
    }
    population = {
        "neurons": n,
        "time_steps": steps,
        "total_spikes": int(counts.sum()),
        "active_fraction": float(has_spike.double().mean()) if n else 0.0,
        "mean_firing_rate": float(rate.mean()) if n else 0.0,
        "mean_isi": _mean_or_none(mean_isi[has_isi]),
    }
    return {"units": {"time": unit, "firing_rate": rate_unit, "mean_isi": unit, "dt": dt},
            "population": population, "per_neuron": per_neuron}


def _mean_or_none(values: torch.Tensor) -> float | None:
    if values.numel() == 0:
        return None
    value = float(values.mean())
    return value if math.isfinite(value) else None
