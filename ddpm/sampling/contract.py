"""The one contract of the samplers here (DDIM, PC, ODE, ALD), so that a runner drives them all
alike: a sampler returns its samples ``x`` and nothing else; it reports the states it passes
through to ``on_state(key, copy of the state)``, once per state of ``states`` in sampling order
(``StateReporter``, whose ``checked_states`` is the one parser of ``states``); NFE is counted
by wrapping the network or score in ``CountingScore``. The ODE's adaptive solver takes its own
number of steps per example, which no wrapper sees: ``ode_sample`` reports it to ``on_nfe``.

Keys: DDIM's paper indices s (T .. 0), PC's states s (num_steps .. 0), ALD's levels (-1 .. L),
the ODE's times (1 .. eps)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

# on_state(key, state): a state the sampler passed through, as a copy the caller may keep.
OnState = Callable[[Any, torch.Tensor], None]


def checked_states(states: Sequence[Hashable] | None, path: Sequence[Hashable], what: str,
                   span: tuple[float, float] | None = None) -> list:
    """The states to report, deduplicated, in sampling order; ``None`` asks for all of ``path``.

    ``path``: the states the sampler passes through, in order, and each requested state must be
    one of them. With ``span = (first, last)`` (continuous keys: the ODE's times) any key between
    first and last is accepted instead, ordered from first towards last, and ``path`` is only
    the default."""
    if states is None:
        return list(path)
    if isinstance(states, bool | str):
        raise TypeError(f"{what} must be a sequence of states or None (all), got {states!r}")
    if span is not None:
        first, last = span
        lo, hi = min(first, last), max(first, last)
        keys = sorted({float(s) for s in states}, reverse=first > last)
        bad = [s for s in keys if not lo <= s <= hi]
        if bad:
            raise ValueError(f"{what} {bad} lie outside [{lo:g}, {hi:g}]")
        return keys
    order = {s: i for i, s in enumerate(path)}
    keys = sorted({int(s) for s in states}, key=lambda s: order.get(s, -1))
    bad = [s for s in keys if s not in order]
    if bad:
        lo, hi = min(path), max(path)
        if len(path) == hi - lo + 1:
            raise ValueError(f"{what} {bad} lie outside {lo}..{hi}")
        raise ValueError(f"{what} {bad} are not among the sampler's states {list(path)}")
    return keys


class StateReporter:
    """Calls ``on_state(key, state.clone())`` for the requested keys (``checked_states``) as a
    sampler passes them; ``keys`` are those keys, empty without ``on_state``."""

    def __init__(self, on_state: OnState | None, states: Sequence[Hashable] | None, path: Sequence[Hashable],
                 what: str, span: tuple[float, float] | None = None) -> None:
        keys = checked_states(states, path, what, span)
        self.on_state, self.keys = on_state, keys if on_state is not None else []
        self._wanted = set(self.keys)

    def __call__(self, key: Hashable, state: torch.Tensor) -> None:
        if key in self._wanted:
            self.on_state(key, state.clone())


class StateRecorder:
    """An ``on_state`` that keeps what it receives, in order: ``keys`` and ``states``."""

    def __init__(self) -> None:
        self.keys: list = []
        self.states: list[torch.Tensor] = []

    def __call__(self, key: Hashable, state: torch.Tensor) -> None:
        self.keys.append(key)
        self.states.append(state)

    def stacked(self) -> torch.Tensor:
        """The states as one tensor [S, *shape]."""
        return torch.stack(self.states)


class CountingScore:
    """A network or score, counting its calls in ``calls`` (each call evaluates the whole batch
    once, so for a fixed-step sampler ``calls`` is every example's NFE)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls += 1
        return self.fn(*args, **kwargs)
