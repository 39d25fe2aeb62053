"""Stimulus currents, step by step."""

import pytest
import torch

from snnrun.config import ConfigError
from snnrun.stimulus import parse_stimulus


def current(section, steps=12, neurons=1, start=0, stop=None, seed=0):
    stim = parse_stimulus(section, "stimulus", "test")
    g = torch.Generator().manual_seed(seed)
    return stim.current(start, stop if stop is not None else steps, neurons, steps, "cpu", torch.float64, g)


def test_step_switches_on_at_onset_and_off_at_offset():
    i = current({"kind": "step", "amplitude": 0.5, "onset": 2, "offset": 5}, steps=7)[:, 0]
    assert i.tolist() == [0, 0, 0.5, 0.5, 0.5, 0, 0]


def test_step_amplitude_per_neuron():
    i = current({"amplitude": [1.0, 2.0, 3.0], "onset": 1}, steps=3, neurons=3)
    assert i.tolist() == [[0, 0, 0], [1, 2, 3], [1, 2, 3]]


def test_pulses_of_given_width_at_given_steps():
    i = current({"kind": "pulse", "amplitude": 2.0, "steps": [1, 5], "width": 2}, steps=8)[:, 0]
    assert i.tolist() == [0, 2, 2, 0, 0, 2, 2, 0]


def test_piecewise_holds_each_value_for_its_segment_and_the_last_after_the_end():
    i = current({"kind": "piecewise", "values": [0.1, 0.2, 0.3], "segment_steps": 2}, steps=9)[:, 0]
    assert i.tolist() == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3, 0.3])


def test_ramp_rises_linearly_from_start_to_amplitude():
    i = current({"kind": "ramp", "start": 0.0, "amplitude": 1.0, "onset": 2, "offset": 6}, steps=9)[:, 0]
    assert i.tolist() == pytest.approx([0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1])


def test_ramp_without_offset_ends_on_the_last_step():
    i = current({"kind": "ramp", "amplitude": 1.0, "onset": 0}, steps=5)[:, 0]
    assert i.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])


def test_sine_oscillates_around_its_bias():
    i = current({"kind": "sine", "amplitude": 1.0, "bias": 0.5, "period": 4, "onset": 0}, steps=4)[:, 0]
    assert i.tolist() == pytest.approx([0.5, 1.5, 0.5, -0.5])


def test_no_stimulus_is_zero():
    assert current({"kind": "none"}, steps=4, neurons=2).abs().sum() == 0


def test_poisson_is_seeded_and_fires_at_rate_p():
    a = current({"kind": "poisson", "p": 0.2, "amplitude": 1.0}, steps=5000, neurons=4, seed=3)
    b = current({"kind": "poisson", "p": 0.2, "amplitude": 1.0}, steps=5000, neurons=4, seed=3)
    c = current({"kind": "poisson", "p": 0.2, "amplitude": 1.0}, steps=5000, neurons=4, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) == {0.0, 1.0}
    assert a.mean().item() == pytest.approx(0.2, abs=0.01)


def test_chunks_join_into_the_whole_signal():
    section = {"kind": "ramp", "amplitude": 1.0, "onset": 3}
    whole = current(section, steps=20)
    parts = torch.cat([current(section, steps=20, start=a, stop=min(a + 7, 20)) for a in range(0, 20, 7)])
    assert torch.allclose(whole, parts)


def test_offset_before_onset_is_an_error():
    with pytest.raises(ConfigError, match="after onset"):
        parse_stimulus({"kind": "ramp", "onset": 5, "offset": 5}, "stimulus", "test")
