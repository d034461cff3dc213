"""Model settings: frozen dataclasses built once from config.model, every field checked.

A family declares its fields as a `@settings` dataclass (see fmjax/models/transformer.py:
TransformerConfig); `from_config` turns a config section into it, and an unknown field, a missing
one or a value of the wrong type is a ConfigError naming the field (`model.num_layrs`), raised
when the run starts rather than as an AttributeError deep inside a module.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from fmjax.errors import ConfigError

T = TypeVar("T")


def settings(cls: type[T]) -> type[T]:
    """The decorator of a settings class: a frozen, keyword-only dataclass."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)


def from_config(cls: type[T], values: Mapping[str, Any], path: str = "model") -> T:
    """`cls` built from a config section (a ConfigDict or dict) named `path` in errors.

    A field whose type is itself a settings class is a subsection (`model.image`); it takes the
    fields it shares with its parent from the parent, unless it sets them itself.
    """
    values = _plain(values)
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown field {path}.{unknown[0]} for {cls.__name__}; known: {', '.join(fields)}"
        )
    kwargs = {}
    for name, field in fields.items():
        if name not in values:
            if field.default is dataclasses.MISSING:
                raise ConfigError(f"{path}.{name} is missing; {cls.__name__} needs it")
            continue
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            section = values[name]
            if not isinstance(section, Mapping):
                raise ConfigError(f"{path}.{name} must be a section of fields, got {section!r}")
            inherited = {
                key: value
                for key, value in values.items()
                if key in {f.name for f in dataclasses.fields(kind)} and key not in section
            }
            kwargs[name] = from_config(kind, {**inherited, **section}, f"{path}.{name}")
        else:
            kwargs[name] = _checked(values[name], kind, f"{path}.{name}")
    built = cls(**kwargs)
    check = getattr(built, "check", None)
    if check is not None:
        check(path)
    return built


def _plain(values) -> dict:
    if hasattr(values, "to_dict"):
        values = values.to_dict()
    return dict(values)


def _checked(value, kind, where: str):
    """`value` as a `kind` (int, float, str, bool, or `X | None` of them), else a ConfigError."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool) and isinstance(value, option):
            return value
    names = " or ".join(getattr(option, "__name__", str(option)) for option in options)
    raise ConfigError(f"{where} must be a {names}, got {value!r} ({type(value).__name__})")
