"""A trained model as the score samplers and the ODE likelihood see it, whatever its family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class ScoreModel:
    """A trained model as the score samplers see it: a continuous-time ``sde`` and ``score``
    (families ddpm and sde), or NCSN's ``sigmas`` (descending) and level-indexed ``level_score``."""

    family: str
    sde: Any = None
    score: Any = None
    sigmas: torch.Tensor | None = None
    level_score: Any = None
