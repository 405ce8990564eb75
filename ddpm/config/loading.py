"""params.yaml -> ``Params``: the YAML loader, with the float spellings DVC writes.

``dvc exp run -S beta_start=0.00001`` writes ``1e-05``, a string to YAML 1.1, so params files
are read with ``ParamsLoader``, which adds YAML 1.2's float spellings (``1e-05``, ``1E-5``,
``.5``, ``5.``) to PyYAML's YAML 1.1 ones.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ddpm.config.schema import Params
from ddpm.errors import ConfigError


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads YAML 1.2's float spellings as floats.

    PyYAML resolves plain scalars by the YAML 1.1 rules, whose floats need a dot and a
    signed exponent: ``1e-05`` (what DVC writes for ``-S beta_start=0.00001``), ``1E-5``
    and ``1e5`` stay strings. The YAML 1.2 core schema (spec 1.2.2, sec. 10.3.2) reads
    them as floats; everything else resolves as before.
    """


# The YAML 1.2 core schema's finite floats less the plain integers, which PyYAML's int
# resolver keeps as ints; .inf and .nan already resolve as floats under YAML 1.1.
_YAML12_FLOAT = re.compile(r"^[-+]?(?:(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[0-9]+[eE][-+]?[0-9]+)$")
ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+.0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read, validate and resolve params.yaml (numbers as ``ParamsLoader`` reads them)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=ParamsLoader)
    except FileNotFoundError:
        raise ConfigError(f"params file {str(path)!r} not found (run from the repository root)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"params file {str(path)!r} is not valid YAML: {err}") from None
    return Params.from_dict(raw or {})
