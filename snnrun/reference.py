"""The config reference in the README, generated from the schema so the two cannot drift apart.

`python -m snnrun.reference` prints it; a test checks the README holds exactly this text.
"""

from __future__ import annotations

from snnrun.config import reference_rows
from snnrun.neurons.conductance import ExcitatoryConfig, InhibitoryConfig
from snnrun.schema import (
    NEURONS,
    TRAINED,
    ConvSpec,
    DataConfig,
    EncodingConfig,
    LayerSpec,
    ModelConfig,
    SimulationConfig,
    STDPConfig,
    STDPData,
    STDPInput,
    STDPNetwork,
    STDPPlasticity,
    STDPTrain,
    SubsetConfig,
    SurrogateSpec,
    TrainConfig,
    TrainSettings,
)
from snnrun.stimulus import STIMULI

UNIT_NOTE = ("The stimulus defaults below are for the unitless models. With a `lif` neuron, a current is in nA and the "
             "defaults that carry units are fitted to the neuron (its rheobase `(v_thresh_mv - v_rest_mv) / r_mohm`): "
             "a step of 4/3 of the rheobase, a ramp to twice it, piecewise values 0, 1/2, 4/3 and 2 times it, a sine "
             "of bias 1 and amplitude 1/2 of it, a poisson input whose mean is twice it, and pulses that each lift the "
             "membrane 1.5 times the threshold's distance from rest (or reset) within their width. The run log lists "
             "the values used. Timings stay in steps.")
HEADER = ["| key | default | allowed | meaning |", "|---|---|---|---|"]


def _table(title: str, cls: type, prefix: str = "", doc: str = "") -> list[str]:
    return [f"#### {title}", "", *([doc, ""] if doc else []), *HEADER, *reference_rows(cls, prefix), ""]


def simulation_reference() -> str:
    parts = _table("Top level", SimulationConfig)
    for model, cls in NEURONS.items():
        parts += _table(f"`neuron` with `model: {model}`", cls, "neuron.")
    parts += [UNIT_NOTE, ""]
    for kind, cls in STIMULI.items():
        parts += _table(f"`stimulus` with `kind: {kind}`", cls, "stimulus.", " ".join((cls.__doc__ or "").split()))
    return "\n".join(parts).rstrip() + "\n"


def training_reference() -> str:
    parts = _table("Top level", TrainConfig)
    parts += _table("`data`", DataConfig, "data.")
    parts += _table("`model`", ModelConfig, "model.")
    for model, cls in TRAINED.items():
        parts += _table(f"`model.neuron` with `model: {model}` (every layer; override per layer in `model.hidden` "
                        "dicts and in `model.output`)", cls, "model.neuron.")
    parts += _table("`model.hidden` items given as dicts (plus any `model.neuron` key)", LayerSpec, "")
    parts += _table("`model.layers` items with `conv` (plus any `model.neuron` key; `{linear: size, dropout}` items "
                    "are the linear layers)", ConvSpec, "")
    parts += _table("`model.surrogate`", SurrogateSpec, "model.surrogate.")
    parts += _table("`encoding`", EncodingConfig, "encoding.")
    parts += _table("`train`", TrainSettings, "train.")
    parts += _table("`train.subset`", SubsetConfig, "train.subset.")
    return "\n".join(parts).rstrip() + "\n"


def stdp_reference() -> str:
    parts = _table("Top level", STDPConfig)
    parts += _table("`data`", STDPData, "data.")
    parts += _table("`stdp`", STDPNetwork, "stdp.")
    parts += _table("`stdp.excitatory`", ExcitatoryConfig, "stdp.excitatory.")
    parts += _table("`stdp.inhibitory`", InhibitoryConfig, "stdp.inhibitory.")
    parts += _table("`stdp.input`", STDPInput, "stdp.input.")
    parts += _table("`stdp.plasticity`", STDPPlasticity, "stdp.plasticity.")
    parts += _table("`train`", STDPTrain, "train.")
    parts += _table("`train.subset`", SubsetConfig, "train.subset.")
    return "\n".join(parts).rstrip() + "\n"


SECTIONS = {"simulate": simulation_reference, "train": training_reference, "stdp": stdp_reference}


def splice(readme: str) -> str:
    """The README with every generated section replaced by its current text."""
    for name, make in SECTIONS.items():
        start, end = f"<!-- reference:{name}:start -->\n", f"<!-- reference:{name}:end -->"
        head, rest = readme.split(start, 1)
        _, tail = rest.split(end, 1)
        readme = head + start + make() + end + tail
    return readme


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if sys.argv[1:] == ["--write"]:
        path = Path("README.md")
        path.write_text(splice(path.read_text()))
    else:
        for make in SECTIONS.values():
            print(make())
