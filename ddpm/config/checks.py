"""How a value is refused, and the single-key bounds the schema declares on its fields.

Every refusal reads ``key=value is not accepted; expected ...``, so that a user error names the
key, the value and what is accepted. A field's own range is declared where the field is
(``bounded``) and checked by one loop (``check_bounds``); ``Params.validate`` keeps the rules
that relate several keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ddpm.errors import ConfigError

AUTO = "auto"
Auto = Literal["auto"]


def check(ok: bool, key: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not accepted; expected {accepted}")


@dataclass(frozen=True)
class Bound:
    """What one key accepts, whatever the other keys hold: ``ok(value)``, else ``accepted`` is shown."""

    ok: Callable[[Any], bool]
    accepted: str


def bounded(default: Any, bound: Bound) -> Any:
    """A dataclass field with ``default`` whose value ``check_bounds`` checks against ``bound``."""
    return dataclasses.field(default=default, metadata={"bound": bound})


def check_bounds(config: Any, prefix: str = "") -> None:
    """Check every bounded field of ``config`` and of its sections, in the schema's order; ``auto``
    passes (what resolves it resolves it in range). Sections are named by ``section_prefix``."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            check_bounds(value, section_prefix(f.name))
        elif "bound" in f.metadata and value != AUTO:
            bound = f.metadata["bound"]
            check(bound.ok(value), prefix + f.name, list(value) if isinstance(value, tuple) else value, bound.accepted)


def section_prefix(name: str) -> str:
    """The dotted prefix of a section's keys: none for the diffusion's, which sit at the top level."""
    return "" if name == "diffusion" else f"{name}."


def _or_auto(text: str, auto: bool) -> str:
    return f"{text} or auto" if auto else text


def at_least(low: int, note: str = "", auto: bool = False) -> Bound:
    """An integer >= ``low``; ``note`` says what a special value means, ``auto`` that auto is accepted."""
    return Bound(lambda v: v >= low, _or_auto(f"an integer >= {low}{note}", auto))


def finite_at_least(low: float, note: str = "") -> Bound:
    return Bound(lambda v: math.isfinite(v) and v >= low, f"a finite number >= {low}{note}")


def finite_positive(note: str = "", auto: bool = False) -> Bound:
    return Bound(lambda v: math.isfinite(v) and v > 0, _or_auto(f"a finite number > 0{note}", auto))


def open_unit(accepted: str = "a number in (0, 1)") -> Bound:
    """A number in (0, 1), described by ``accepted``."""
    return Bound(lambda v: 0 < v < 1, accepted)


def unit_fraction() -> Bound:
    """A number in [0, 1): a rate or a decay that may be 0."""
    return Bound(lambda v: 0 <= v < 1, "a number in [0, 1)")


def one_of(choices: Iterable[str]) -> Bound:
    choices = tuple(choices)
    return Bound(lambda v: v in choices, f"one of {', '.join(choices)}")
