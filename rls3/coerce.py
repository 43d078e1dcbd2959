"""Typed records from plain nested mappings (the YAML layout) and back: each value coerced by
the record's type hints, and every error a `ConfigError` naming the dotted key and what is
allowed. The plumbing under `rls3.config.Config.from_dict` / `to_dict`."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Union, cast

from rls3.configerror import ConfigError


def to_plain(obj: Any) -> Any:
    """Records as nested dicts, tuples as lists (what YAML writes)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    return obj


def deep_merge(base: dict[str, Any], new: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """`new` over `base`, section by section; a key `base` lacks is a ConfigError."""
    out = dict(base)
    for key, value in new.items():
        name = f"{prefix}{key}"
        if key not in base:
            allowed = ", ".join(base)
            where = f"section {prefix[:-1]!r}" if prefix else "the top level"
            raise ConfigError(f"unknown key {name!r}; allowed keys in {where}: {allowed}")
        if isinstance(base[key], dict) and isinstance(value, Mapping) and key == "options":
            # free-form options merge key by key (`--set backend.options.image_size=64` keeps
            # the build path); a null value removes an option
            merged = {**base[key], **value}
            out[key] = {k: v for k, v in merged.items() if v is not None}
        elif isinstance(base[key], dict) and isinstance(value, Mapping):
            out[key] = deep_merge(base[key], value, f"{name}.")
        else:
            out[key] = value
    return out


def build_record(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    """`cls(**data)`, each value coerced to its field's type; `prefix` names the section."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"unknown key {prefix + key!r}; allowed: {sorted(names)}")
    for f in fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = coerce(hints[f.name], data[f.name], prefix + f.name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e)
        if msg.startswith("invalid ") and prefix:  # EnvConfig style: "invalid t0=-1: must be ..."
            raise ConfigError(f"invalid {prefix}{msg[len('invalid '):]}") from e
        raise ConfigError(f"{prefix[:-1] or cls.__name__}: {msg}") from e


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` as type `tp` (YAML's spelling of numbers, lists as tuples), or a ConfigError."""
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"invalid {key}={value!r}: must be a mapping (section)")
        return build_record(cast(type, tp), value, key + ".")
    if origin in (Union, types.UnionType):
        return _coerce_union(tp, value, key)
    if origin is tuple:
        return _coerce_tuple(tp, value, key)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"invalid {key}={value!r}: must be a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"invalid {key}={value!r}: must be true or false")
        return value
    if tp in (int, float):
        return _coerce_number(tp, value, key)
    if tp is str:
        return _coerce_str(value, key)
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # pragma: no cover


def _coerce_union(tp: Any, value: Any, key: str) -> Any:
    """`coerce` for `X | Y | None`: the first member type that accepts `value`."""
    args = typing.get_args(tp)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"invalid {key}=None: a value is required")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return coerce(arg, value, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[-1] if len(errors) == 1 else
                      f"invalid {key}={value!r}: must be {describe(tp)}")


def _coerce_tuple(tp: Any, value: Any, key: str) -> tuple[Any, ...]:
    """`coerce` for `tuple[X, ...]`: a YAML list, each element coerced to X."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"invalid {key}={value!r}: must be a list")
    (elem, *_rest) = typing.get_args(tp)
    return tuple(coerce(elem, v, f"{key}[{i}]") for i, v in enumerate(value))


def _coerce_number(tp: Any, value: Any, key: str) -> int | float:
    """`coerce` for `int` and `float` (`tp`), a number spelled as a string included."""
    if isinstance(value, str):
        value = _parse_number(tp, value)
    return _coerce_int(value, key) if tp is int else _coerce_float(value, key)


def _parse_number(tp: Any, value: str) -> Any:
    """`value` as a `tp` (else a float, else unchanged): YAML 1.1 reads "1e-5" (and "1e12") as
    a string."""
    try:
        return float(value) if tp is float else int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def _coerce_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"invalid {key}={value!r}: must be an integer")
    return value


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"invalid {key}={value!r}: must be a number")
    if not math.isfinite(value):
        raise ConfigError(f"invalid {key}={value!r}: must be a finite number")
    return float(value)


def _coerce_str(value: Any, key: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith(
            "ent_coef"):
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(f"invalid {key}={value!r}: must be a string")
    return value


def describe(tp: Any) -> str:
    """A union type in words ('int or null')."""
    names = []
    for arg in typing.get_args(tp):
        if arg is type(None):
            names.append("null")
        elif typing.get_origin(arg) is tuple:
            names.append("a list")
        else:
            names.append(getattr(arg, "__name__", str(arg)))
    return " or ".join(names)

