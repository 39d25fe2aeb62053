"""Configuration: YAML files and `--set` overrides into validated, typed dataclasses.

Every section is a frozen dataclass whose fields carry their own rule (type, range,
choices, documentation). `parse(cls, mapping, ...)` checks a mapping against it and
raises `ConfigError` naming the file, the key, the value and what is allowed.

`ConfigError` is one kind of `UserError`, the base of every problem a person can fix (missing data, a folder
that is not a run, a NIR or image file that cannot be read, a device this machine lacks): the CLI catches them
as one type, prints the message and exits with code 2.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


class UserError(Exception):
    """A problem a person can fix, with a message for people: the CLI prints `source: key: message` as one line
    and exits with `exit_code` (2), without a traceback. `source` is the file, folder or option at fault, `key`
    the config key (if any), `detail` the message alone."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None,
                 related: tuple[str, ...] = ()):
        self.source = source
        self.key = key
        self.related = related  # other keys a cross-field rule involves (so a --set of any of them is named)
        self.detail = message
        where = ": ".join(part for part in (source, key) if part)
        super().__init__(f"{where}: {message}" if where else message)


class ConfigError(UserError, ValueError):
    """A config problem a person can fix: names the file, the key, the value and what is allowed."""


class DataError(UserError):
    """The data set (MNIST) is missing or damaged; the message says how to get it."""


class RunFolderError(UserError):
    """A run, sweep or checkpoint folder given is not one the command takes, or not in the state it needs."""


class NIRFileError(UserError):
    """A NIR file cannot be read, or describes a network snnrun does not build."""


class ImageFileError(UserError):
    """An image file given to predict is missing or cannot be read as digits."""


class DeviceError(UserError):
    """The device asked for is not on this machine."""


# --------------------------------------------------------------------------- fields


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one config key accepts."""

    kind: str  # "number", "integer", "string", "bool", "choice", "list", "section", "any"
    doc: str = ""
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    per_neuron: bool = False  # a number, or a list with one number per neuron
    item_kind: str = "number"  # for kind == "list"
    min_items: int = 0

    def allowed(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(self.choices)
        elif self.kind in ("number", "integer"):
            noun = "an integer" if self.kind == "integer" else "a number"
            text = noun + _range_text(self)
            if self.per_neuron:
                text += ", or a list with one such value per neuron"
        elif self.kind == "list":
            noun = "integers" if self.item_kind == "integer" else "numbers"
            text = f"a list of {noun}" + _range_text(self)
            if self.min_items:
                text += f" with at least {self.min_items} item(s)"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "string":
            text = "a string"
        else:
            text = "a mapping"
        return text + (", or null" if self.nullable else "")


def _range_text(rule: Rule) -> str:
    lo, hi = rule.minimum, rule.maximum
    if lo is not None and hi is not None:
        return f" in [{_fmt(lo)}, {_fmt(hi)}]"
    if lo is not None:
        return f" {'>' if rule.exclusive_minimum else '>='} {_fmt(lo)}"
    if hi is not None:
        return f" <= {_fmt(hi)}"
    return ""


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def field(default: Any, kind: str, doc: str = "", **rule: Any) -> Any:
    """A dataclass field with its validation rule (mutable defaults are copied)."""
    meta = {"rule": Rule(kind=kind, doc=doc, **rule)}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: _copy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    return yaml.safe_load(yaml.safe_dump(value))


def number(default, doc="", **rule):
    return field(default, "number", doc, **rule)


def integer(default, doc="", **rule):
    return field(default, "integer", doc, **rule)


def choice(default, choices: Iterable[str], doc=""):
    return field(default, "choice", doc, choices=tuple(choices))


def rule_of(f: dataclasses.Field) -> Rule:
    return f.metadata.get("rule", Rule("section"))


# --------------------------------------------------------------------------- checking


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def check_value(value: Any, rule: Rule, key: str, source: str | None) -> Any:
    """Return `value` converted to the rule's type, or raise ConfigError."""

    def fail(why: str = "") -> ConfigError:
        shown = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        reason = why or f"got {_type_name(value)}"
        return ConfigError(f"{shown} is not allowed ({reason}); expected {rule.allowed()}", source=source, key=key)

    if value is None:
        if rule.nullable:
            return None
        raise fail()
    if rule.kind in ("number", "integer"):
        if rule.per_neuron and isinstance(value, list):
            if not value:
                raise fail("an empty list")
            return [check_value(v, dataclasses.replace(rule, per_neuron=False, nullable=False), key, source)
                    for v in value]
        return _check_scalar(value, rule, fail)
    if rule.kind == "list":
        if not isinstance(value, list):
            raise fail()
        if len(value) < rule.min_items:
            raise fail(f"{len(value)} item(s)")
        item_rule = Rule(kind=rule.item_kind, minimum=rule.minimum, maximum=rule.maximum,
                         exclusive_minimum=rule.exclusive_minimum)
        return [_check_scalar(v, item_rule, fail) for v in value]
    if rule.kind == "bool":
        if not isinstance(value, bool):
            raise fail()
        return value
    if rule.kind == "string":
        if not isinstance(value, str) or not value:
            raise fail()
        return value
    if rule.kind == "choice":
        if not isinstance(value, str) or value not in rule.choices:
            raise fail("not a known choice" if isinstance(value, str) else "")
        return value
    return value


def _check_scalar(value: Any, rule: Rule, fail: Callable[..., ConfigError]) -> float | int:
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string; people mean the number
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail()
    if rule.kind == "integer":
        if isinstance(value, float):
            if not value.is_integer():
                raise fail("not a whole number")
            value = int(value)
    else:
        value = float(value)
    if not math.isfinite(value):
        raise fail("not finite")
    if rule.minimum is not None:
        too_small = value <= rule.minimum if rule.exclusive_minimum else value < rule.minimum
        if too_small:
            raise fail("out of range")
    if rule.maximum is not None and value > rule.maximum:
        raise fail("out of range")
    return value


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse(cls: type, data: Any, *, path: str = "", source: str | None = None,
          sections: Mapping[str, Callable[[Any, str, str | None], Any]] | None = None) -> Any:
    """Build dataclass `cls` from a mapping, checking every key against its rule.

    `sections` maps a field name to a parser for a nested section (used where the
    section's class depends on a value inside it, such as `neuron.model`).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of keys to values, got {_type_name(data)}",
                          source=source, key=path or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = _join(path, str(unknown[0]))
        allowed = ", ".join(fields)
        hint = getattr(cls, "unknown_key_hint", "")
        other = getattr(cls, "other_command", None)  # (command, its keys): a file meant for another command
        if other is not None and not path and set(map(str, data)) & other[1]:
            raise ConfigError(f"unknown key: this file is a config for `snnrun {other[0]}` (it has "
                              f"{', '.join(sorted(set(map(str, data)) & other[1]))}); run snnrun {other[0]} "
                              f"{source or 'FILE'}", source=source, key=key)
        raise ConfigError(f"unknown key; allowed here: {allowed}{hint}", source=source, key=key)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        key = _join(path, name)
        if sections and name in sections:
            values[name] = sections[name](data.get(name), key, source)
        elif dataclasses.is_dataclass(f.type) or rule_of(f).kind == "section":
            section_cls = _section_class(cls, name)
            values[name] = parse(section_cls, data.get(name), path=key, source=source)
        elif name in data:
            values[name] = check_value(data[name], rule_of(f), key, source)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path=path, source=source)
    return obj


def _section_class(cls: type, name: str) -> type:
    """The dataclass of a nested section (annotations resolved, as `from __future__ import annotations` defers them)."""
    return typing.get_type_hints(cls)[name]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def per_neuron_values(obj: Any) -> dict[str, list]:
    """The fields of a section given as one value per neuron (lists where a number is allowed too)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)
            if rule_of(f).per_neuron and isinstance(getattr(obj, f.name), list)}


def to_dict(obj: Any) -> Any:
    """A dataclass config as plain YAML-ready data (the resolved config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- files and overrides


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, with clear errors for a missing or unparsable file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        examples = ", ".join(example_configs())
        hint = f" (the example configs, by name: {examples}; `snnrun configs` lists them)" if examples else ""
        raise ConfigError("no such config file" + hint if not path.exists() else "not a file", source=source)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError("not a UTF-8 text file", source=source) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise ConfigError(f"cannot parse YAML{where}: {problem}", source=source) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the file must hold a mapping of keys to values, not {_type_name(data)}", source=source)
    return data


def parse_override(item: str, option: str = "--set") -> tuple[str, Any]:
    """`KEY=VALUE` as (dotted key, value parsed as YAML; text that is not YAML stays a string)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"{item!r} is not KEY=VALUE (e.g. --set neuron.beta=0.9)", source=option)
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not valid YAML: take it as the literal string, the schema decides
    return key, value


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply `KEY=VALUE` overrides (dotted keys, values parsed as YAML) to a copy of `data`."""
    data = _copy(data) if data else {}
    for item in overrides:
        key, value = parse_override(item)
        node = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[:depth + 1])} is a value, not a section", source="--set", key=key)
            node = child
        node[parts[-1]] = value
    return data


@dataclasses.dataclass(frozen=True)
class KindKey:
    """A section whose keys depend on one of its values (`neuron.model`, `stimulus.kind`, `encoding.kind`)."""

    section: str  # dotted path of the section
    key: str  # the key that chooses the kind
    default: str  # the kind when the section does not say
    keeps: tuple[str, ...] = ()  # keys that mean the same for every kind and survive a switch


@dataclasses.dataclass(frozen=True)
class KindSwitch:
    """A section whose kind the command line changed: it starts from the new kind's defaults."""

    section: str
    key: str
    old: str
    new: str
    dropped: tuple[str, ...]  # the file's keys of that section that no longer apply
    source: str | None

    def note(self) -> str:
        where = f" from {self.source}" if self.source else ""
        dropped = f"; dropped{where}: {', '.join(self.dropped)}" if self.dropped else ""
        return (f"{self.section}.{self.key}: {self.old} -> {self.new} (command line): {self.section} starts from "
                f"the defaults of {self.new}{dropped}")


def switch_kinds(data: dict, overrides: Iterable[str], kinds: Iterable[KindKey], source: str | None
                 ) -> tuple[dict, list[KindSwitch]]:
    """The file's data with every section whose kind the command line changes started afresh, as Hydra's config
    groups do: the new kind's defaults, then whatever the command line gives. Returns the data and the switches
    made (each names the keys of the file it dropped)."""
    data = _copy(data) if data else {}
    switches = []
    given = dict(parse_override(item) for item in overrides)
    for kind in kinds:
        new = given.get(f"{kind.section}.{kind.key}")
        parent, name = _node(data, kind.section)
        section = parent.get(name) if parent is not None else None
        if not isinstance(new, str) or not isinstance(section, dict):
            continue
        old = section.get(kind.key, kind.default)
        if new == old:
            continue
        parent[name] = {k: v for k, v in section.items() if k in kind.keeps}
        dropped = tuple(k for k in section if k not in kind.keeps and k != kind.key)
        switches.append(KindSwitch(kind.section, kind.key, str(old), new, dropped, source))
    return data, switches


def _node(data: dict, path: str) -> tuple[dict | None, str]:
    """The mapping holding the last part of a dotted path, and that part (None where the path is missing)."""
    *heads, last = path.split(".")
    node: Any = data
    for head in heads:
        node = node.get(head) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)


def reference_rows(cls: type, prefix: str = "") -> list[str]:
    """Markdown table rows documenting every key of a section: key, default, allowed values, meaning."""
    rows = []
    for f in dataclasses.fields(cls):
        rule = rule_of(f)
        if rule.kind == "section":
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
        rows.append(f"| `{prefix}{f.name}` | `{shown}` | {rule.allowed()} | {rule.doc} |")
    return rows


# --------------------------------------------------------------------------- the example configs


def shipped_configs() -> Path | None:
    """The folder of example configs: snnrun/configs in an installed wheel, the repository's configs/ in a
    checkout (or an editable install)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "configs", here.parent / "configs"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


def config_path(path: str | Path) -> Path:
    """A config file as given, or an example config by its name (`smoke`, `smoke.yaml`) when no such file is
    here: `snnrun train smoke` works from any folder."""
    path = Path(path)
    folder = shipped_configs()
    if path.exists() or folder is None or len(path.parts) > 1 and path.parts[0] != "configs":
        return path
    shipped = folder / (path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml")
    return shipped if shipped.is_file() else path


def example_configs() -> dict[str, str]:
    """Example config name -> its first comment line."""
    folder = shipped_configs()
    found = {}
    for file in sorted(folder.glob("*.yaml")) if folder else []:
        first = file.read_text(encoding="utf-8").split("\n", 1)[0]
        found[file.stem] = first.lstrip("# ").strip() if first.startswith("#") else ""
    return found
