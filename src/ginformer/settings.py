"""Typed settings: dataclass fields checked against their annotations, and errors that name the key.

`load_yaml` parses a config's text and refuses a key written twice in one mapping (PyYAML would keep the last
one silently). Every section of a run config (the model, the task's data, training) is a dataclass whose fields carry a type and
a default. `build_settings` turns a parsed YAML mapping into one: unknown keys are refused with the closest
allowed name, each value is checked (and gently coerced: `1e-4` written without a dot is a float) against its
annotation, nested dataclasses are built the same way, and a class's own `ValueError` comes back as a
`ConfigError` naming where it happened. Nothing here knows about tasks or models.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Literal, Mapping

import yaml

from ginformer.errors import ConfigError


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load's loader, refusing a mapping that names a key twice (merge keys `<<` may still be overridden:
    that is what they are for)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise ConfigError(f"{self.name}: key '{key}' is written twice, on lines {lines[key]} and "
                                          f"{line}; keep one of them")
                except TypeError:  # an unhashable key: the base constructor says so
                    break
                lines[key] = line
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str) -> Any:
    """Parsed YAML (safe: plain data only); a duplicated key, a syntax error or nesting too deep to parse is a
    ConfigError naming `where`."""
    loader = _UniqueKeyLoader(text)
    loader.name = where
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where} is not valid YAML: {at}{err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{where}: its values are nested too deeply to read") from None
    finally:
        loader.dispose()


def build_settings(cls: type, values: Any, where: str):
    """`cls(**values)` with unknown and missing keys refused, each value checked against its annotation (nested
    dataclasses built the same way), and the class's own ValueError reported as a ConfigError naming `where` (""
    for a whole config, whose keys are named alone)."""
    values = section_mapping(values, where or "config")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    allowed = [f.name for f in fields]
    checked = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in allowed:
            raise ConfigError(unknown_key_message(f"key in '{where}'" if where else "key", name, allowed))
        if dataclasses.is_dataclass(hints[key]):
            checked[key] = build_settings(hints[key], value, name)
        else:
            checked[key] = coerce(value, hints[key], name)
    required = [f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [key for key in required if key not in checked]
    if missing:
        raise ConfigError(f"{where or 'the config'} misses {', '.join(missing)}; it needs {', '.join(required)}")
    try:
        return cls(**checked)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"{where}: {err}" if where else str(err)) from None


def section_mapping(values: Any, where: str) -> dict[str, Any]:
    """A config section as a dict; a missing (None) section is empty."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"section '{where}' must be a mapping of keys to values, got {values!r}")
    return dict(values)


def check_fields(obj: Any, where: str) -> None:
    """Check (and coerce) every field of a dataclass instance against its annotation, for `__post_init__`s, so
    settings built in Python are held to what a YAML file is."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        setattr(obj, f.name, coerce(getattr(obj, f.name), hints[f.name], f"{where}.{f.name}"))


def unknown_key_message(what: str, name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name.rsplit(".", 1)[-1], allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown {what}: '{name}'{hint}; allowed: {', '.join(allowed)}"


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: expected {allowed}")


def positive(obj: Any, where: str, *names: str) -> None:
    """Each named field is > 0; a None field (an unset optional) is left alone."""
    for name in names:
        value = getattr(obj, name)
        if value is not None:
            require(value > 0, f"{where}.{name}", value, "> 0")


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """`value` checked against `annotation` (int, float, bool, str, None, Literal, list, unions of them)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}={value!r} is not allowed: expected {describe(annotation)}")
    if origin is Literal:
        allowed = typing.get_args(annotation)
        require(value in allowed, key, value, f"one of {list(allowed)}")
        return value
    if origin is list:
        (item,) = typing.get_args(annotation)
        require(isinstance(value, (list, tuple)), key, value, describe(annotation))
        return [coerce(v, item, key) for v in value]
    if origin is dict:
        require(isinstance(value, Mapping), key, value, describe(annotation))
        key_type, value_type = typing.get_args(annotation)
        return {coerce(k, key_type, key): coerce(v, value_type, f"{key}.{k}") for k, v in value.items()}
    if annotation is type(None):
        require(value is None, key, value, "null")
        return None
    if annotation is bool:
        require(isinstance(value, bool), key, value, "true or false")
        return value
    if annotation is int:
        require(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if annotation is float:
        # PyYAML reads `1e-4` (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        require(ok, key, value, "a finite number")
        return float(value)
    if annotation is str:
        require(isinstance(value, str), key, value, "a string")
        return value
    if annotation is Any:
        return value
    raise TypeError(f"{key}: unsupported annotation {annotation!r}")


def describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"a list of {describe(typing.get_args(annotation)[0])}"
    if origin is dict:
        return "a mapping"
    if origin is Literal:
        return f"one of {list(typing.get_args(annotation))}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        annotation, str(annotation)
    )
