"""Turning uint8 images into network input over `time_steps` steps.

`direct` returns the image once, as a constant current (the first layer then runs
once, not every step); `rate` and `latency` return spikes shaped (time, batch, pixels).
Random encodings draw from the generator they are given, so runs are reproducible.
"""

from __future__ import annotations

import torch

KINDS = ("direct", "rate", "latency")


def encode(images: torch.Tensor, kind: str, time_steps: int, gain: float,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 images (batch, ...) -> float input: (batch, pixels) for direct, else (time, batch, pixels)."""
    x = images.reshape(images.shape[0], -1).float() / 255.0
    if kind == "direct":
        return x * gain
    if kind == "rate":
        # Bernoulli spikes with p = pixel * gain
        p = (x * gain).clamp_(0, 1)
        draws = torch.rand((time_steps, *p.shape), generator=generator, device=p.device)
        return (draws < p).float()
    if kind == "latency":
        # one spike per lit pixel, at step round((1 - pixel) * (T - 1)): brighter fires earlier
        step = ((1 - x) * (time_steps - 1)).round().long()
        spikes = torch.zeros((time_steps, *x.shape), device=x.device)
        spikes.scatter_(0, step.unsqueeze(0), (x > 0).float().unsqueeze(0))
        return spikes
    raise ValueError(f"unknown encoding {kind!r}; expected one of {', '.join(KINDS)}")
