"""What every neuron model shares: the spike's forward pass, the resets, the clock, parameter values."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from snnrun.config import ConfigError, choice, field, number

Tensor = torch.Tensor
Scalar = float | Tensor
SpikeFn = Callable[[Tensor], Tensor]

MODEL_NAMES = ("leaky", "lapicque", "synaptic", "lif")
RESETS = ("subtract", "zero", "none")
RESET_DELAY_DOC = ("true: a spike resets the membrane at the next step (snnTorch); false: at once, in the step "
                   "that fires (Norse, SpikingJelly)")


DEFAULT_BETA = 0.9


# the keys several models share, each with its rule and meaning
def beta_key(doc: str = f"membrane decay per step (null: from tau and dt, else {DEFAULT_BETA})"):
    return number(None, doc, minimum=0, maximum=1, per_neuron=True, nullable=True)


def tau_key():
    return number(None, "membrane time constant; beta = exp(-dt/tau)", minimum=0, exclusive_minimum=True,
                  per_neuron=True, nullable=True)


def dt_key():
    return number(None, "step length, same unit as tau", minimum=0, exclusive_minimum=True, nullable=True)


def threshold_key():
    return number(1.0, "firing threshold", minimum=0, exclusive_minimum=True, per_neuron=True)


def reset_key():
    return choice("subtract", RESETS, "reset mechanism after a spike")


def reset_delay_key():
    return field(True, "bool", RESET_DELAY_DOC)


def model_key(name: str):
    return choice(name, MODEL_NAMES, "neuron model (chooses the keys below)")


def check_beta_or_tau(section, path: str, source: str | None) -> None:
    """beta, or tau and dt together: a ConfigError naming the keys otherwise."""
    if section.beta is not None and (section.tau is not None or section.dt is not None):
        raise ConfigError("give beta, or tau and dt, not both", source=source, key=f"{path}.beta",
                          related=(f"{path}.tau", f"{path}.dt"))
    if (section.tau is None) != (section.dt is None):
        missing, given = ("dt", "tau") if section.dt is None else ("tau", "dt")
        raise ConfigError("tau and dt go together (beta = exp(-dt/tau))", source=source, key=f"{path}.{missing}",
                          related=(f"{path}.{given}",))


class RestsAtZero:
    """The discrete models' levels: the membrane rests at 0 and fires above `threshold`."""

    @property
    def rest(self) -> float:
        return 0.0

    @property
    def firing_threshold(self) -> float | list:
        return self.threshold


def heaviside(x: Tensor) -> Tensor:
    """S = 1 where x > 0, else 0, in x's dtype (the forward pass of every surrogate)."""
    return (x > 0).to(x.dtype)


def reset_now(v: Tensor, spikes: Tensor, threshold: Scalar, reset: str) -> Tensor:
    """The membrane after an immediate reset by the spikes just emitted (the reset carries no gradient)."""
    fired = spikes.detach()
    if reset == "subtract":
        return v - fired * threshold
    if reset == "zero":
        return v * (1 - fired)
    return v


@dataclass(frozen=True)
class Clock:
    """The length of a step and its unit ("ms", "s", or "step" when the model has no units)."""

    dt: float
    unit: str

    @property
    def seconds(self) -> float | None:
        return {"ms": 1e-3, "s": 1.0}.get(self.unit)


def values(value, device, dtype) -> Scalar:
    """A config number stays a Python float (cheapest in a step); a per-neuron list becomes a tensor."""
    if isinstance(value, list):
        return torch.as_tensor(value, dtype=dtype, device=device)
    return float(value)


def decay_of(beta, tau, dt, default: float):
    """beta as given; else exp(-dt/tau) (per neuron for a list of tau); else the default."""
    if beta is not None:
        return beta
    if tau is None:
        return default
    if isinstance(tau, list):
        return [math.exp(-dt / t) for t in tau]
    return math.exp(-dt / tau)


def pairs(a, b) -> list[tuple]:
    """(a_i, b_i) for two values that are each a number or a per-neuron list."""
    n = max(len(a) if isinstance(a, list) else 1, len(b) if isinstance(b, list) else 1)
    at = lambda x, i: x[i % len(x)] if isinstance(x, list) else x  # noqa: E731
    return [(at(a, i), at(b, i)) for i in range(n)]


class Trace(NamedTuple):
    """What `run` returns: spikes and membranes over the steps (time first), and the state after the last; the
    kernel path gives the spikes as events instead: a (spikes, 2) int32 tensor of (step, neuron) rows in time
    order."""

    spikes: Tensor | None
    membranes: Tensor
    state: tuple
    events: Tensor | None = None
