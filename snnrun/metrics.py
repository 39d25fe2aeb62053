"""Spike-train statistics computed on whole (time, neurons) spike tensors at once."""

from __future__ import annotations

import math

import torch


def spike_train_metrics(spikes: torch.Tensor, dt: float, unit: str) -> dict:
    """Per-neuron and population statistics of a boolean (time, neurons) spike tensor.

    Per neuron: spike count, firing rate (Hz when `unit` is "ms" or "s", else spikes per
    step), first spike step and time, mean inter-spike interval (in `unit`) and its
    coefficient of variation (std/mean; null with fewer than two intervals).
    """
    steps, n = spikes.shape
    seconds_per_unit = {"ms": 1e-3, "s": 1.0}.get(unit)
    # Spike (neuron, step) pairs ordered by neuron, then time: consecutive pairs of one neuron give its ISIs.
    step_idx, neuron_idx = spikes.nonzero(as_tuple=True)  # ordered by time
    neuron_idx, order = torch.sort(neuron_idx, stable=True)
    step_idx = step_idx[order]
    counts = torch.bincount(neuron_idx, minlength=n)  # far faster than a bool sum over time
    rate = counts.double() / (steps * dt * (seconds_per_unit or 1.0))
    first = torch.full((n,), -1, dtype=torch.int64, device=spikes.device)
    if step_idx.numel():
        first.scatter_reduce_(0, neuron_idx, step_idx, reduce="amin", include_self=False)
    same = neuron_idx[1:] == neuron_idx[:-1]
    isi = (step_idx[1:] - step_idx[:-1])[same].double() * dt
    owner = neuron_idx[1:][same]
    isi_count = torch.bincount(owner, minlength=n).double()
    isi_sum = torch.zeros(n, dtype=torch.float64, device=spikes.device).index_add_(0, owner, isi)
    isi_sq = torch.zeros(n, dtype=torch.float64, device=spikes.device).index_add_(0, owner, isi * isi)
    mean_isi = isi_sum / isi_count.clamp(min=1)
    var = (isi_sq / isi_count.clamp(min=1) - mean_isi**2).clamp(min=0)
    cv = var.sqrt() / mean_isi.clamp(min=1e-300)

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
        "active_fraction": float(has_spike.double().mean()),
        "mean_firing_rate": float(rate.mean()),
        "mean_isi": _mean_or_none(mean_isi[has_isi]),
    }
    return {"units": {"time": unit, "firing_rate": rate_unit, "mean_isi": unit, "dt": dt},
            "population": population, "per_neuron": per_neuron}


def _mean_or_none(values: torch.Tensor) -> float | None:
    if values.numel() == 0:
        return None
    value = float(values.mean())
    return value if math.isfinite(value) else None
