"""The config reference in the README, generated from the schema so the two cannot drift apart.

`python -m snnrun.reference` prints it; a test checks the README holds exactly this text.
"""

from __future__ import annotations

from snnrun.config import reference_rows
from snnrun.simulation import NEURONS, SimulationConfig
from snnrun.stimulus import STIMULI

HEADER = ["| key | default | allowed | meaning |", "|---|---|---|---|"]


def simulation_reference() -> str:
    parts = ["#### Top level", "", *HEADER, *reference_rows(SimulationConfig), ""]
    for model, cls in NEURONS.items():
        parts += [f"#### `neuron` with `model: {model}`", "", *HEADER, *reference_rows(cls, "neuron."), ""]
    for kind, cls in STIMULI.items():
        doc = " ".join((cls.__doc__ or "").split())
        parts += [f"#### `stimulus` with `kind: {kind}`", "", doc, "", *HEADER, *reference_rows(cls, "stimulus."), ""]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(simulation_reference(), end="")
