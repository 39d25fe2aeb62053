"""Spike-train statistics against counts and intervals worked out by hand."""

import pytest
import torch

from snnrun.metrics import spike_train_metrics


def spikes_at(steps, trains):
    s = torch.zeros((steps, len(trains)), dtype=torch.bool)
    for n, train in enumerate(trains):
        s[train, n] = True
    return s


def test_counts_rates_first_spike_and_intervals_in_milliseconds():
    # neuron 0: spikes at 2, 5, 11 -> ISIs 3, 6 steps = 0.3, 0.6 ms; mean 0.45, std 0.15, CV 1/3
    # neuron 1: silent; neuron 2: one spike (no interval)
    m = spike_train_metrics(spikes_at(20, [[2, 5, 11], [], [7]]), dt=0.1, unit="ms")
    per = m["per_neuron"]
    assert per["spike_count"] == [3, 0, 1]
    assert per["firing_rate"] == pytest.approx([3 / 2e-3, 0, 1 / 2e-3])  # 20 steps of 0.1 ms = 2 ms
    assert per["first_spike_step"] == [2, None, 7]
    assert per["first_spike_time"] == pytest.approx([0.2, None, 0.7])
    assert per["mean_isi"][0] == pytest.approx(0.45) and per["mean_isi"][1:] == [None, None]
    assert per["isi_cv"][0] == pytest.approx(1 / 3) and per["isi_cv"][2] is None
    assert m["units"]["firing_rate"] == "Hz"
    assert m["population"]["total_spikes"] == 4 and m["population"]["active_fraction"] == pytest.approx(2 / 3)


def test_regular_train_has_zero_cv_and_rate_per_step_without_units():
    m = spike_train_metrics(spikes_at(10, [[0, 2, 4, 6, 8]]), dt=1.0, unit="step")
    assert m["per_neuron"]["firing_rate"] == [0.5]
    assert m["per_neuron"]["isi_cv"] == [pytest.approx(0.0)]
    assert m["units"]["firing_rate"] == "spikes/step"


def test_regular_train_cv_is_exactly_zero_whatever_the_step_length():
    # 0.1 ms steps and 140 equal intervals: a one-pass variance (E[x^2] - E[x]^2) left 3.7e-08 here
    m = spike_train_metrics(spikes_at(1000, [list(range(3, 1000, 7))]), dt=0.1, unit="ms")
    assert m["per_neuron"]["isi_cv"] == [0.0]
    assert m["per_neuron"]["mean_isi"][0] == pytest.approx(0.7)


def test_event_metrics_equal_the_dense_ones():
    from snnrun.metrics import event_metrics

    g = torch.Generator().manual_seed(0)
    dense = torch.rand((300, 40), generator=g) < 0.05
    steps, neurons = dense.nonzero(as_tuple=True)
    assert event_metrics(steps.int(), neurons.int(), 300, 40, 1.0, "step") == spike_train_metrics(dense, 1.0, "step")
