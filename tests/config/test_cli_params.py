"""Values typed on the command line reach the config as numbers: a real `dvc exp run -S`
writes small floats into params.yaml as `1e-05` (a string to a YAML 1.1 reader) and an
integer typed as `2e3` as `2000.0`. Lists typed one after another leave params.yaml valid YAML."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

STAGE_SCRIPT = """\
import json
from ddpm.config import load_params

params = load_params("params.yaml")
with open("resolved.json", "w") as f:
    json.dump({"beta_start": params.diffusion.beta_start, "lr": params.train.lr, "steps": params.train.steps}, f)
"""

DVC_YAML = """\
stages:
  read_params:
    cmd: python read_params.py
    deps:
      - read_params.py
    params:
      - beta_start
      - train.lr
      - train.steps
    metrics:
      - resolved.json:
          cache: false
"""


def list_keys(params: dict, prefix: str = "") -> list[str]:
    return [key for name, value in params.items() for key in (
        list_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else
        [f"{prefix}{name}"] if isinstance(value, list) else [])]


def test_lists_set_one_after_another_leave_params_yaml_valid_for_pure_and_c_yaml(tmp_path: Path) -> None:
    """`dvc exp run -S key=[...]` rewrites params.yaml with ruamel's round trip, keeping comments, and
    every later dvc command parses it (ruamel's safe loader, in C where ruamel.yaml.clib is installed).
    A list set, then emptied, then set again must leave a file both parsers read, holding the value
    set. (With the comment at the end of `sweep:`'s line, emptying a list DVC had written as a block
    glued the next keys onto one line: "mapping values are not allowed here"; C YAML also refused the
    unquoted flow list `[ddim:10, ...]`.) DVC's own override code (dvc.utils.hydra.apply_overrides,
    what -S calls) runs on a copy of the repository's params.yaml."""
    import yaml
    from dvc.utils.hydra import apply_overrides
    from ruamel.yaml import YAML

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    keys = list_keys(yaml.safe_load(path.read_text()))
    assert "quality.sweep" in keys
    typed = {"quality.sweep": [("[ddim:10,ddim:25]", ["ddim:10", "ddim:25"]), ("[]", []), ("[ddim:5]", ["ddim:5"])]}
    for key in keys:
        for text, value in typed.get(key, [("[1,2]", [1, 2]), ("[]", []), ("[3]", [3])]):
            apply_overrides(path, [f"{key}={text}"])
            for pure in (True, False):
                loaded = YAML(typ="safe", pure=pure).load(path.read_text())
                for part in key.split("."):
                    loaded = loaded[part]
                assert loaded == value, (key, text, "pure" if pure else "C")


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_dvc_exp_run_set_small_floats_reach_the_config_as_numbers(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    (root / "read_params.py").write_text(STAGE_SCRIPT)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / ".gitignore").write_text("resolved.json\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "PYTHON"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(REPO),
               DVC_NO_ANALYTICS="1")
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.name", "test"],
                ["git", "config", "user.email", "test@example.com"], [sys.executable, "-m", "dvc", "init", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        run(cmd, root, env)

    run([sys.executable, "-m", "dvc", "exp", "run", "-S", "beta_start=0.00001", "-S", "train.lr=0.00002",
         "-S", "train.steps=2e3"], root, env)

    resolved = json.loads((root / "resolved.json").read_text())
    assert resolved == {"beta_start": 1e-05, "lr": 2e-05, "steps": 2000}
    assert isinstance(resolved["steps"], int)
