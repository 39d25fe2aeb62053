"""Input currents for `simulate`: one config section per stimulus kind.

Each kind is a dataclass that is both its config section (fields with rules) and
its generator: `current(start, stop, ...)` returns the current for steps
[start, stop), shaped (time, neurons), or (time, 1) when every neuron gets the same
current (it broadcasts; a 100,000-neuron step current costs no more than one neuron's).
Long runs are generated in chunks instead of as one huge array.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from snnrun.config import ConfigError, choice, field, integer, number, parse

Tensor = torch.Tensor

KINDS = ("step", "pulse", "piecewise", "ramp", "sine", "poisson", "none")


def _as_tensor(value, device, dtype) -> Tensor:
    """A per-neuron value (list) as a (1, neurons) row, a number as (1, 1): both broadcast over time."""
    return torch.as_tensor(value, dtype=dtype, device=device).reshape(1, -1)


def _steps(start: int, stop: int, device) -> Tensor:
    return torch.arange(start, stop, device=device).reshape(-1, 1)


def _check_offset(stimulus, path: str, source: str | None) -> None:
    if stimulus.offset is not None and stimulus.offset <= stimulus.onset:
        raise ConfigError(f"{stimulus.offset} is not allowed; expected a step after onset ({stimulus.onset}) or null",
                          source=source, key=f"{path}.offset")


@dataclass(frozen=True)
class Step:
    """`amplitude` from step `onset` until step `offset` (exclusive; null: to the end)."""

    kind: str = choice("step", KINDS, "stimulus kind (chooses the keys below)")
    amplitude: float | list = number(0.21, "current while on", per_neuron=True)
    onset: int = integer(10, "first step with current", minimum=0)
    offset: int | None = integer(None, "first step without current again (null: never)", minimum=0, nullable=True)

    def validate(self, path: str, source: str | None) -> None:
        _check_offset(self, path, source)

    def current(self, start, stop, neurons, time_steps, device, dtype, generator=None) -> Tensor:
        t = _steps(start, stop, device)
        on = (t >= self.onset) & (t < (self.offset if self.offset is not None else math.inf))
        return on.to(dtype) * _as_tensor(self.amplitude, device, dtype)


@dataclass(frozen=True)
class Pulse:
    """`amplitude` for `width` steps starting at each step in `steps`."""

    kind: str = choice("pulse", KINDS, "stimulus kind (chooses the keys below)")
    amplitude: float | list = number(1.2, "current during a pulse", per_neuron=True)
    steps: list = field([20, 60, 100, 140], "list", "steps at which a pulse starts", item_kind="integer",
                        minimum=0, min_items=1)
    width: int = integer(1, "steps each pulse lasts", minimum=1)

    def current(self, start, stop, neurons, time_steps, device, dtype, generator=None) -> Tensor:
        t = _steps(start, stop, device)
        onsets = torch.as_tensor(self.steps, device=device).reshape(1, -1)
        on = ((t >= onsets) & (t < onsets + self.width)).any(dim=1, keepdim=True)
        return on.to(dtype) * _as_tensor(self.amplitude, device, dtype)


@dataclass(frozen=True)
class Piecewise:
    """`values[k]` during steps [k*segment_steps, (k+1)*segment_steps); the last value holds after
    the end, as Brian2's TimedArray does."""

    kind: str = choice("piecewise", KINDS, "stimulus kind (chooses the keys below)")
    values: list = field([0.0, 0.15, 0.25, 0.5], "list", "current of each segment", min_items=1)
    segment_steps: int = integer(50, "steps per segment", minimum=1)

    def current(self, start, stop, neurons, time_steps, device, dtype, generator=None) -> Tensor:
        index = (_steps(start, stop, device) // self.segment_steps).clamp_(max=len(self.values) - 1)
        values = torch.as_tensor(self.values, dtype=dtype, device=device)
        return values[index]


@dataclass(frozen=True)
class Ramp:
    """Linear from `start` at step `onset` to `amplitude` at step `offset` (null: the last step),
    zero before onset, held at `amplitude` after offset."""

    kind: str = choice("ramp", KINDS, "stimulus kind (chooses the keys below)")
    amplitude: float | list = number(0.5, "current at the end of the ramp", per_neuron=True)
    start: float = number(0.0, "current at the onset")
    onset: int = integer(10, "step where the ramp starts", minimum=0)
    offset: int | None = integer(None, "step where it reaches amplitude (null: the last step)", minimum=0,
                                 nullable=True)

    def validate(self, path: str, source: str | None) -> None:
        _check_offset(self, path, source)

    def current(self, start, stop, neurons, time_steps, device, dtype, generator=None) -> Tensor:
        t = _steps(start, stop, device).to(dtype)
        end = self.offset if self.offset is not None else max(time_steps - 1, self.onset + 1)
        frac = ((t - self.onset) / (end - self.onset)).clamp_(0, 1)
        amplitude = _as_tensor(self.amplitude, device, dtype)
        return torch.where(t >= self.onset, self.start + frac * (amplitude - self.start), torch.zeros_like(frac))


@dataclass(frozen=True)
class Sine:
    """bias + amplitude*sin(2*pi*(t - onset)/period + phase) from step `onset` on."""

    kind: str = choice("sine", KINDS, "stimulus kind (chooses the keys below)")
    amplitude: float | list = number(0.2, "peak deviation from the bias", per_neuron=True)
    bias: float = number(0.15, "mean current")
    period: float = number(50.0, "steps per cycle", minimum=0, exclusive_minimum=True)
    phase: float = number(0.0, "phase at onset, radians")
    onset: int = integer(0, "first step with current", minimum=0)

    def current(self, start, stop, neurons, time_steps, device, dtype, generator=None) -> Tensor:
        t = _steps(start, stop, device).to(dtype)
        wave = self.bias + _as_tensor(self.amplitude, device, dtype) * torch.sin(
            2 * math.pi * (t - self.onset) / self.period + self.phase)
        return torch.where(t >= self.onset, wave, torch.zeros_like(wave))


@dataclass(frozen=True)
class Poisson:
    """Independent spike trains: each step each neuron receives `amplitude` with probability `p`."""

    kind: str = choice("poisson", KINDS, "stimulus kind (chooses the keys below)")
    p: float | list = number(0.1, "spike probability per step", minimum=0, maximum=1, per_neuron=True)
    amplitude: float | list = number(0.5, "current delivered by one input spike", per_neuron=True)
    seed: int | None = integer(None, "seed of the spike trains (null: the config's seed)", nullable=True)

    def current(self, start, stop, neurons, time_steps, device, dtype, generator=None) -> Tensor:
        draws = torch.rand((stop - start, neurons), generator=generator, device=device, dtype=dtype)
        spikes = (draws < _as_tensor(self.p, device, dtype)).to(dtype)
        return spikes * _as_tensor(self.amplitude, device, dtype)


@dataclass(frozen=True)
class NoStimulus:
    """No input: watch the initial membrane relax."""

    kind: str = choice("none", KINDS, "stimulus kind (chooses the keys below)")

    def current(self, start, stop, neurons, time_steps, device, dtype, generator=None) -> Tensor:
        return torch.zeros((stop - start, 1), device=device, dtype=dtype)


STIMULI = {"step": Step, "pulse": Pulse, "piecewise": Piecewise, "ramp": Ramp, "sine": Sine,
           "poisson": Poisson, "none": NoStimulus}


def parse_stimulus(data, key: str, source: str | None):
    """The stimulus section, its class chosen by `kind` (default step)."""
    data = {} if data is None else data
    kind = data.get("kind", "step") if isinstance(data, dict) else None
    if not isinstance(kind, str) or kind not in STIMULI:
        raise ConfigError(f"{kind!r} is not allowed; expected one of {', '.join(KINDS)}", source=source,
                          key=f"{key}.kind")
    return parse(STIMULI[kind], data, path=key, source=source)
