"""Config files and `--set` overrides: every mistake names the file, the key, the value and what is allowed."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from snnrun.commands import load_simulation_config
from snnrun.config import ConfigError, apply_overrides, to_dict
from snnrun.schema import SimulationConfig, parse_simulation

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def error_for(data, source="cfg.yaml"):
    with pytest.raises(ConfigError) as info:
        parse_simulation(data, source)
    return info.value


def test_shipped_step_config_is_the_built_in_default_with_snntorchs_tutorial_decay():
    """step.yaml keeps snnTorch's tutorial beta 0.8 (its results unchanged); the built-in leaky default is the one
    that train and simulate share, 0.9. Every other key of step.yaml is the built-in default."""
    from_file = parse_simulation(yaml.safe_load((CONFIGS / "step.yaml").read_text()), "step.yaml")
    defaults = parse_simulation({"name": "step-current", "neuron": {"beta": 0.8}}, "defaults")
    assert to_dict(from_file) == to_dict(defaults)
    assert from_file.neuron.beta == 0.8 and from_file.stimulus.amplitude == 0.21 and from_file.time_steps == 200
    assert parse_simulation({}, "defaults").neuron.decay == 0.9


def test_train_and_simulate_share_each_neuron_models_keys_and_defaults():
    from snnrun.schema import NEURONS, TRAINED

    for model, trained in TRAINED.items():
        simulated = {f.name: f.default for f in dataclasses.fields(NEURONS[model])}
        for f in dataclasses.fields(trained):
            if f.name not in ("learn_beta", "learn_threshold"):  # what train learns
                assert simulated[f.name] == f.default, (model, f.name)
        if model != "lif":  # lif resets at once, as Brian2 does
            assert "reset_delay" in simulated


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("*.yaml")
                                        if yaml.safe_load(p.read_text()).get("neuron") is not None
                                        and "sweep" not in yaml.safe_load(p.read_text())))  # in test_sweep
def test_every_shipped_simulation_config_is_valid(path):
    cfg = parse_simulation(yaml.safe_load((CONFIGS / path).read_text()), path)
    assert isinstance(cfg, SimulationConfig)


def test_resolved_config_parses_back_to_the_same_config():
    cfg = parse_simulation({"neuron": {"model": "leaky", "tau": 5.0, "dt": 1.0}}, "x.yaml")
    again = parse_simulation(yaml.safe_load(yaml.safe_dump(to_dict(cfg))), "resolved")
    assert to_dict(again) == to_dict(cfg)


def test_unknown_key_names_file_key_and_allowed_keys():
    e = error_for({"neuron": {"betta": 0.9}})
    assert e.source == "cfg.yaml" and e.key == "neuron.betta"
    assert "unknown key" in str(e) and "beta" in str(e) and "threshold" in str(e)


def test_unknown_top_level_key():
    assert error_for({"time_step": 5}).key == "time_step"


def test_wrong_type_names_the_value_and_the_expected_type():
    e = error_for({"time_steps": "many"})
    assert e.key == "time_steps" and "many" in str(e) and "integer" in str(e)


def test_boolean_is_not_a_number():
    assert error_for({"neuron": {"threshold": True}}).key == "neuron.threshold"


@pytest.mark.parametrize("data,key", [
    ({"neuron": {"beta": 1.5}}, "neuron.beta"),
    ({"neuron": {"beta": -0.1}}, "neuron.beta"),
    ({"neuron": {"tau": 0.0, "dt": 1.0}}, "neuron.tau"),
    ({"neuron": {"model": "lif", "tau_ms": -1}}, "neuron.tau_ms"),
    ({"time_steps": 0}, "time_steps"),
    ({"neurons": 0}, "neurons"),
    ({"neuron": {"model": "lif", "refractory_ms": -1}}, "neuron.refractory_ms"),
    ({"neuron": {"model": "lif", "v_reset_mv": -40}}, "neuron.v_reset_mv"),
    ({"neuron": {"model": "izhikevich"}}, "neuron.model"),
    ({"neuron": {"reset": "sometimes"}}, "neuron.reset"),
    ({"stimulus": {"kind": "square"}}, "stimulus.kind"),
    ({"stimulus": {"kind": "poisson", "p": 2}}, "stimulus.p"),
    ({"stimulus": {"onset": 20, "offset": 10}}, "stimulus.offset"),
    ({"stimulus": {"kind": "pulse", "steps": [10, 500]}}, "stimulus.steps"),
    ({"neuron": {"beta": 0.9, "tau": 2.0, "dt": 1.0}}, "neuron.beta"),
    ({"neuron": {"tau": 2.0}}, "neuron.dt"),
    ({"dtype": "float16"}, "dtype"),
])
def test_value_out_of_range_names_the_key(data, key):
    e = error_for(data)
    assert e.key == key
    assert "expected" in str(e) or "give" in str(e) or "go together" in str(e)


def test_per_neuron_list_of_the_wrong_length():
    e = error_for({"neurons": 3, "stimulus": {"amplitude": [0.1, 0.2]}})
    assert e.key == "stimulus.amplitude" and "3" in str(e)


def test_per_neuron_lists_are_accepted_with_one_value_per_neuron():
    cfg = parse_simulation({"neurons": 2, "neuron": {"threshold": [1.0, 2.0]}, "stimulus": {"amplitude": [0, 1]}},
                           "x")
    assert cfg.neuron.threshold == [1.0, 2.0] and cfg.stimulus.amplitude == [0.0, 1.0]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_simulation_config(tmp_path / "nope.yaml", [])
    assert "no such config file" in str(info.value) and "nope.yaml" in str(info.value)


def test_unparsable_yaml_says_where(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("neuron:\n  beta: [0.8\n")
    with pytest.raises(ConfigError) as info:
        load_simulation_config(bad, [])
    assert "bad.yaml" in str(info.value) and "line" in str(info.value)


def test_a_yaml_list_is_not_a_config(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_simulation_config(bad, [])


def test_set_overrides_dotted_keys_with_yaml_values():
    data = apply_overrides({"neuron": {"beta": 0.8}}, ["neuron.beta=0.9", "stimulus.amplitude=[0.1, 0.2]",
                                                       "stimulus.offset=null", "name=my run"])
    assert data == {"neuron": {"beta": 0.9}, "stimulus": {"amplitude": [0.1, 0.2], "offset": None},
                    "name": "my run"}


def test_set_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["neuron.beta"])


def test_set_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"neurons": 3}, ["neurons.count=2"])


def test_current_switches_the_stimulus_kind_with_its_defaults(in_tmp):
    cfg = load_simulation_config(None, [], current="pulse")
    assert cfg.stimulus.kind == "pulse" and cfg.stimulus.steps == [20, 60, 100, 140]
    assert cfg.neuron.beta == 0.8  # the rest of configs/step.yaml stays


def test_unknown_current_kind():
    with pytest.raises(ConfigError, match="step, pulse"):
        load_simulation_config(None, [], current="square")


keys = st.lists(st.sampled_from(["name", "time_steps", "neurons", "neuron", "stimulus", "beta", "model", "kind",
                                 "amplitude", "tau_ms", "threshold", "reset", "onset", "x"]), min_size=1, max_size=3)
values = st.one_of(st.none(), st.booleans(), st.integers(-5, 300), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.floats(-2, 2), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, values), max_size=4))
def test_any_override_gives_a_valid_config_or_a_config_error(overrides):
    items = [".".join(k) + "=" + yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()
             for k, v in overrides]
    try:
        cfg = parse_simulation(apply_overrides({}, items), "fuzz")
    except ConfigError as error:
        assert str(error)
    else:
        assert cfg.time_steps >= 1 and cfg.neurons >= 1
