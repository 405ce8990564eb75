"""The stage entry points, called in-process the way DVC calls them: bad input gives one
clear line and exit code 2 before any work, and leaves no partial outputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages import evaluate, prepare, sample, train

REPO = Path(__file__).resolve().parents[1]


def write_params(path: Path, **overrides) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in overrides.items():
        if "." in key:
            section, name = key.split(".")
            params[section][name] = value
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params))
    return path


def test_prepare_writes_arrays_and_meta(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    assert prepare.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "prep")]) == 0
    assert sorted(p.name for p in (tmp_path / "prep").iterdir()) == ["meta.json", "test.npy", "train.npy"]


@pytest.mark.parametrize("overrides, fragment", [
    ({"beta_schedul": "cosine"}, "did you mean 'beta_schedule'"),
    ({"timesteps": -3}, "timesteps=-3"),
    ({"dataset": "imagenet"}, "dataset='imagenet'"),
])
def test_bad_params_stop_the_stage_with_one_line(tmp_path, capsys, overrides, fragment):
    params = write_params(tmp_path / "params.yaml", **overrides)
    out = tmp_path / "prep"
    code = prepare.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert not out.exists()


def test_train_rejects_batch_larger_than_dataset_and_bad_image_size(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml")
    prepare.main(["--params", str(params), "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "prep")])
    env_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for overrides, fragment in (({"train.batch_size": 5000}, "train.batch_size=5000 is larger than the training set"),
                                ({"model.channel_mult": [1, 1, 1, 1, 1]}, "image_size=8 cannot be halved 4 times")):
        bad = write_params(tmp_path / "bad.yaml", **overrides)
        args = ["--params", str(bad), "--data", str(tmp_path / "prep"), "--out", str(tmp_path / "models"),
                "--state", str(tmp_path / "ckpt" / "state.pt"), "--reports", str(tmp_path / "rep")]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", env_uri)
            assert train.main(args) == 2
        assert fragment in capsys.readouterr().err
        assert not (tmp_path / "models").exists() and not (tmp_path / "rep").exists()
    # The image-size error comes before the tracking store is touched.
    assert not (tmp_path / "mlflow.db").exists()


def test_sample_and_evaluate_refuse_a_missing_checkpoint(tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml")
    assert sample.main(["--params", str(params), "--model", str(tmp_path / "none.pt"), "--out", str(tmp_path / "s")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert evaluate.main(["--params", str(params), "--model", str(tmp_path / "none.pt"), "--data", str(tmp_path),
                          "--metrics", str(tmp_path / "m.json"), "--terms", str(tmp_path / "t.csv")]) == 2
    assert not (tmp_path / "m.json").exists()


def test_dvc_yaml_lists_every_ddpm_module_each_stage_imports():
    """Declared deps cannot go stale: import each stage in a fresh interpreter and compare."""
    stages_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages_yaml.items():
        code = ("import sys, stages.{0}; print('\\n'.join(sorted(m for m in sys.modules "
                "if m == 'ddpm' or m.startswith('ddpm.'))))").format(name)
        mods = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.split()
        files = {m.replace(".", "/") + ("/__init__.py" if m in ("ddpm", "ddpm.nn") else ".py") for m in mods}
        declared = {d for d in stage["deps"] if d.startswith("ddpm/")}
        assert files == declared, f"stage {name}: imports {sorted(files - declared)} undeclared, " \
                                  f"declares {sorted(declared - files)} unused"
        assert f"stages/{name}.py" in stage["deps"]
