"""Raw params values -> the schema's types, refusing what does not fit.

``Params.from_dict`` builds each section with ``build``; apart from ``ddpm.config.loading``
(which reads the file and needs ``Params``) so that the schema can use it without a cycle.
Integer fields also take an integral float (``train.steps: 8e5`` is 800000; 1.5 is refused);
a quoted value (``"1e-5"``) stays a string and is refused where a number is expected: quotes
say the value is text.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import fields
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ddpm.errors import ConfigError


def reject_unknown(raw: dict[str, Any], known: set[str], prefix: str) -> None:
    for key in raw:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else "."
            raise ConfigError(
                f"unknown key '{prefix}{key}'{hint} Known keys: {', '.join(prefix + k for k in sorted(known))}"
            )


def build(cls: type, section: dict[str, Any], prefix: str) -> Any:
    """The dataclass ``cls`` from the mapping ``section``, whose keys are named ``prefix + key``."""
    reject_unknown(section, {f.name for f in fields(cls)}, prefix)
    hints = get_type_hints(cls)
    return cls(**{k: coerce(prefix + k, v, hints[k]) for k, v in section.items()})


def _describe(hint: Any) -> str:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        return str(choices[0]) if len(choices) == 1 else "one of " + ", ".join(str(a) for a in choices)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(hint))
    if origin is tuple:
        return "a list of strings" if get_args(hint)[0] is str else "a list of integers"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _integral(value: Any) -> bool:
    """An int, or a float holding an integer (``8e5``, as YAML 1.2 reads it); never a bool."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type ``hint``; return it in the field's type."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in get_args(hint):
            try:
                return coerce(key, value, option)
            except ConfigError:
                continue
    elif origin is Literal:
        if value in get_args(hint):
            return value
    elif origin is tuple and get_args(hint)[0] is str:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and all(_integral(v) for v in value):
            return tuple(int(v) for v in value)
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if _integral(value):
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}={value!r} is not accepted; expected {_describe(hint)}")
