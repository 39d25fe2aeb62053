"""Turning uint8 images into network input over `time_steps` steps.

`direct` returns the image once, as a constant current (the first layer then runs
once, not every step); `rate` and `latency` return spikes shaped (time, batch, pixels);
`events` turns an event data set's frames (already spikes over time) into the same shape.
In physical units, for a network of `lif` neurons (Brian2's MNIST experiment): `current` drives one lif neuron
per pixel (the model's own neuron, untrained) by pixel x gain nA for every step, and its spikes are the input;
`poisson` draws spikes at pixel x gain Hz, p = rate x dt per step.
Random encodings draw from the generator they are given, so runs are reproducible.
"""

from __future__ import annotations

import torch

KINDS = ("direct", "rate", "latency", "events", "current", "poisson")
PHYSICAL = ("current", "poisson")  # in nA or Hz, stepped at the lif neurons' dt_ms


def encode(images: torch.Tensor, kind: str, time_steps: int, gain: float,
           generator: torch.Generator | None = None, neurons=None) -> torch.Tensor:
    """uint8 images (batch, ...) -> float input: (batch, pixels) for direct, else (time, batch, pixels).
    events: uint8 frames (batch, time, ...) of event counts -> (time, batch, features) counts*gain.
    current and poisson: `neurons` are the lif parameters (`LIFParameters`) of the input neurons and the clock."""
    if kind == "events":
        if images.shape[1] != time_steps:
            raise ValueError(f"frames of {images.shape[1]} steps, expected {time_steps}")
        return images.transpose(0, 1).reshape(time_steps, images.shape[0], -1).float().mul_(gain)
    x = images.reshape(images.shape[0], -1).float() / 255.0
    if kind == "direct":
        return x * gain
    if kind == "rate":
        return rate_spikes((x * gain).clamp_(0, 1), time_steps, generator)
    if kind == "current":  # 784 physical neurons, one per pixel, each at rest when its digit starts
        from snnrun.neurons import run

        return run("lif", (x * gain).expand(time_steps, *x.shape), neurons).spikes.to(x.dtype)
    if kind == "poisson":
        return rate_spikes((x * (gain * neurons.dt_ms / 1000.0)).clamp_(0, 1), time_steps, generator)
    if kind == "latency":
        # one spike per lit pixel, at step round((1 - pixel) * (T - 1)): brighter fires earlier
        step = ((1 - x) * (time_steps - 1)).round().long()
        spikes = torch.zeros((time_steps, *x.shape), device=x.device)
        spikes.scatter_(0, step.unsqueeze(0), (x > 0).float().unsqueeze(0))
        return spikes
    raise ValueError(f"unknown encoding {kind!r}; expected one of {', '.join(KINDS)}")


def rate_spikes(p: torch.Tensor, time_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Bernoulli spikes (time_steps, *p.shape) with probability p, from 16-bit random integers.

    Each draw is 2 bytes of a full-range 64-bit random integer (a quarter of the generator calls, and no
    float conversion), compared with round(p * 65536): P(spike) = p to within 2**-17. Half the time of
    `torch.rand(...) < p` on the CPU, seeded and reproducible like it.
    """
    count = time_steps * p.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=p.device)
    words.random_(-(2**63), None, generator=generator)
    draws = words.view(torch.int16)[:count].view(time_steps, *p.shape)  # uniform on [-32768, 32767]
    below = (p * 65536).round_().to(torch.int32) - 32768  # p = 1: 32768, above every draw; p = 0: never
    return (draws < below).float()
