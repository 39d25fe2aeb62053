"""The leaky integrate-and-fire neuron, snnTorch's `Leaky`: its parameters, state, step and fast path.

    U[t] = beta*U[t-1] + I[t] - S[t-1]*threshold      (reset: subtract)
    U[t] = beta*(1 - S[t-1])*U[t-1] + I[t]            (reset: zero)
    U[t] = beta*U[t-1] + I[t]                         (reset: none)
    S[t] = H(U[t] - threshold)

snnTorch's delayed reset: the spike of step t-1 resets the membrane in step t, and carries no gradient. With
`reset_delay: false` the spike resets the membrane in the step that fires (Norse, SpikingJelly).
Fast path: `sequence.run_sequence`, the whole sequence as one autograd node with a written-out backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from snnrun.neurons.common import (
    DEFAULT_BETA,
    Clock,
    RestsAtZero,
    Scalar,
    SpikeFn,
    Tensor,
    beta_key,
    check_beta_or_tau,
    decay_of,
    dt_key,
    heaviside,
    model_key,
    reset_delay_key,
    reset_key,
    reset_now,
    tau_key,
    threshold_key,
    values,
)


@dataclass(frozen=True)
class LeakyConfig(RestsAtZero):
    """The `neuron` section of a leaky neuron, in `simulate` and `train` alike."""

    model: str = model_key("leaky")
    beta: float | list | None = beta_key()
    tau: float | list | None = tau_key()
    dt: float | None = dt_key()
    threshold: float | list = threshold_key()
    reset: str = reset_key()
    reset_delay: bool = reset_delay_key()

    current_unit: ClassVar[str] = ""  # unitless, as snnTorch's discrete models
    membrane_unit: ClassVar[str] = ""
    time_unit: ClassVar[str] = "step"

    def validate(self, path, source):
        check_beta_or_tau(self, path, source)

    @property
    def decay(self) -> float | list:
        """beta as given, or exp(-dt/tau), or the default."""
        return decay_of(self.beta, self.tau, self.dt, DEFAULT_BETA)

    def parameters(self, device=None, dtype=None) -> LeakyParameters:
        return LeakyParameters(values(self.decay, device, dtype), values(self.threshold, device, dtype), self.reset,
                               self.reset_delay)

    def clock(self) -> Clock:
        return Clock(1.0, self.time_unit)


class LeakyState(NamedTuple):
    membrane: Tensor


@dataclass(frozen=True)
class LeakyParameters:
    """The values a step uses: numbers, per-neuron tensors, or a network's (learned) tensors."""

    beta: Scalar
    threshold: Scalar
    reset: str = "subtract"
    reset_delay: bool = True


def leaky_step(current: Tensor, state: LeakyState, p: LeakyParameters,
               spike_fn: SpikeFn = heaviside) -> tuple[Tensor, LeakyState]:
    """U[t] = beta*U[t-1] + I[t] - S[t-1]*threshold  (subtract)
       U[t] = beta*(1 - S[t-1])*U[t-1] + I[t]        (zero)
       U[t] = beta*U[t-1] + I[t]                     (none)
       S[t] = H(U[t] - threshold),  S[t-1] = H(U[t-1] - threshold) carries no gradient.
    With reset_delay False: S[t] = H(beta*U[t-1] + I[t] - threshold), then U[t] is reset by S[t] at once.
    """
    u = state.membrane
    if not p.reset_delay:
        v = p.beta * u + current
        spikes = spike_fn(v - p.threshold)
        return spikes, LeakyState(reset_now(v, spikes, p.threshold, p.reset))
    if p.reset == "subtract":
        u = p.beta * u + current - heaviside(u - p.threshold) * p.threshold
    elif p.reset == "zero":
        u = p.beta * (u * (1 - heaviside(u - p.threshold))) + current
    else:
        u = p.beta * u + current
    return spike_fn(u - p.threshold), LeakyState(u)


def initial_state(membrane: Tensor) -> LeakyState:
    return LeakyState(membrane)
