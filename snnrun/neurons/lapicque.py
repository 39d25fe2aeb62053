"""Lapicque's RC neuron, snnTorch's `Lapicque`: forward Euler of tau*dU/dt = -U + R*I, tau = R*C.

    V[t] = I[t]*R*dt/(R*C) + (1 - dt/(R*C))*U[t-1]
    U[t] = V[t] - S[t-1]*threshold (subtract) | V[t]*(1 - S[t-1]) (zero) | V[t] (none)
    S[t] = H(U[t] - threshold)

The reset is delayed as in `leaky`. No fast path: `simulate` runs the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from snnrun.config import ConfigError, number
from snnrun.neurons.common import (
    Clock,
    RestsAtZero,
    Scalar,
    SpikeFn,
    Tensor,
    heaviside,
    model_key,
    reset_key,
    threshold_key,
    values,
)
from snnrun.neurons.leaky import LeakyState

DEFAULT_C = 1e-3


@dataclass(frozen=True)
class LapicqueConfig(RestsAtZero):
    """The `neuron` section of a Lapicque neuron."""

    model: str = model_key("lapicque")
    R: float | list = number(5.0, "resistance (ohm, with the current in A and the membrane in V)", minimum=0,
                             exclusive_minimum=True, per_neuron=True)
    C: float | list | None = number(None, f"capacitance (F; null: from beta, else {DEFAULT_C:g})", minimum=0,
                                    exclusive_minimum=True, per_neuron=True, nullable=True)
    time_step: float = number(1e-3, "step length in seconds (forward Euler)", minimum=0, exclusive_minimum=True)
    beta: float | None = number(None, "instead of C: C = time_step/(R*ln(1/beta)), as snnTorch derives it",
                                minimum=0, maximum=1, exclusive_minimum=True, nullable=True)
    threshold: float | list = threshold_key()
    reset: str = reset_key()

    current_unit: ClassVar[str] = "A"  # SI, as snnTorch's tutorial: R in ohms, C in farads, time_step in seconds
    membrane_unit: ClassVar[str] = "V"
    time_unit: ClassVar[str] = "s"

    def validate(self, path, source):
        if self.beta is not None and self.beta >= 1:
            raise ConfigError(f"{self.beta} is not allowed; expected a number in (0, 1)", source=source,
                              key=f"{path}.beta")
        if self.beta is not None and self.C is not None:
            raise ConfigError("give C, or beta (C = time_step/(R*ln(1/beta))), not both", source=source,
                              key=f"{path}.beta", related=(f"{path}.C",))

    def parameters(self, device=None, dtype=None) -> LapicqueParameters:
        R = values(self.R, device, dtype)
        if self.beta is not None:
            C = lapicque_capacitance(self.beta, R, self.time_step)
        else:
            C = values(DEFAULT_C if self.C is None else self.C, device, dtype)
        return LapicqueParameters(R, C, self.time_step, values(self.threshold, device, dtype), self.reset)

    def clock(self) -> Clock:
        return Clock(self.time_step, self.time_unit)


@dataclass(frozen=True)
class LapicqueParameters:
    R: Scalar
    C: Scalar
    time_step: Scalar
    threshold: Scalar
    reset: str = "subtract"


def lapicque_step(current: Tensor, state: LeakyState, p: LapicqueParameters,
                  spike_fn: SpikeFn = heaviside) -> tuple[Tensor, LeakyState]:
    """V[t] = I[t]*R*dt/(R*C) + (1 - dt/(R*C))*U[t-1]
       U[t] = V[t] - S[t-1]*threshold (subtract) | V[t]*(1 - S[t-1]) (zero) | V[t] (none)
    """
    u = state.membrane
    tau = p.R * p.C
    v = current * p.R * (1 / tau) * p.time_step + (1 - p.time_step / tau) * u
    if p.reset == "subtract":
        v = v - heaviside(u - p.threshold) * p.threshold
    elif p.reset == "zero":
        v = v - heaviside(u - p.threshold) * v
    return spike_fn(v - p.threshold), LeakyState(v)


def lapicque_capacitance(beta: float, R: Scalar, time_step: float) -> Scalar:
    """C for a decay `beta`, as snnTorch derives it: C = time_step / (R * ln(1/beta))."""
    return time_step / (R * math.log(1 / beta))


def initial_state(membrane: Tensor) -> LeakyState:
    return LeakyState(membrane)
