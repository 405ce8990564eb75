"""The stage entry points, called in-process the way DVC calls them: bad input gives one
clear line and exit code 2 before any work, and leaves no partial outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from ddpm.config import load_params
from ddpm.errors import CheckpointError
from ddpm.pipeline.checkpoint import check_compatible, load_checkpoint
from ddpm.pipeline.tracking import Tracker
from stages import evaluate, plot, prepare, sample, train

REPO = Path(__file__).resolve().parents[2]


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
    assert sorted(p.name for p in (tmp_path / "prep").iterdir()) == [
        "meta.json", "test.npy", "test_labels.npy", "train.npy", "train_labels.npy"]


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


def error_and_hint(stage: str, err: str) -> tuple[str, str]:
    """The stage's one error line and its hint line (the whole of stderr for a user error)."""
    error, hint = err.strip().splitlines()
    assert error.startswith(f"{stage}: error: ") and hint.startswith(f"{stage}: hint: "), err
    return error, hint


def test_sample_and_evaluate_refuse_a_missing_checkpoint_saying_what_is_wrong_and_the_pipeline_hint(
        tmp_path, capsys):
    """The library says what is wrong; only the stage names the pipeline command (its hint)."""
    params = write_params(tmp_path / "params.yaml")
    model = str(tmp_path / "none.pt")
    assert sample.main(["--params", str(params), "--model", model, "--out", str(tmp_path / "s")]) == 2
    error, hint = error_and_hint("sample", capsys.readouterr().err)
    assert error == f"sample: error: checkpoint {model!r} does not exist"
    assert "dvc repro train" in hint
    assert evaluate.main(["--params", str(params), "--model", model, "--data", str(tmp_path),
                          "--metrics", str(tmp_path / "m.json"), "--terms", str(tmp_path / "t.csv")]) == 2
    error, hint = error_and_hint("evaluate", capsys.readouterr().err)
    assert error == f"evaluate: error: checkpoint {model!r} does not exist"
    assert not (tmp_path / "m.json").exists()


def test_checkpoint_errors_from_the_library_do_not_name_the_pipeline(tmp_path):
    path = tmp_path / "model.pt"
    messages = []
    for content in (None, b"not a checkpoint"):
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        messages.append(str(err.value))
    with pytest.raises(CheckpointError) as err:
        check_compatible(path, {"timesteps": 1000}, {"timesteps": 500})
    messages.append(str(err.value))
    assert messages[2].endswith("the current params:\n  timesteps: checkpoint has 1000, params have 500")
    for message in messages:
        assert "dvc" not in message and "stages" not in message, message


def write_reports(root: Path, loss_csv: str) -> dict[str, Path]:
    """The plot stage's inputs: prepared digits and the reports the other stages write."""
    params = write_params(root / "params.yaml")
    prepared = root / "prep"
    assert prepare.main(["--params", str(params), "--raw", str(root / "raw"), "--out", str(prepared)]) == 0
    reports = root / "reports"
    (reports / "train").mkdir(parents=True)
    (reports / "train" / "loss.csv").write_text(loss_csv)
    (reports / "eval").mkdir()
    (reports / "eval" / "terms.csv").write_text("t,term,stderr\n1,0.9,0.01\n2,0.2,0.01\n")
    quality = {"families": ["classifier"],
               "samples": {"sampler": "ancestral", "nfe": 1000, "fd_classifier": 2.0, "fd_classifier_floor": 0.5}}
    (reports / "metrics.json").write_text(json.dumps({"unit": "bits/dim", "quality": quality}))
    (reports / "quality").mkdir()
    (reports / "quality" / "nfe.csv").write_text("setting,sampler,nfe,fd_classifier\nddim_10,ddim,10,3.0\n"
                                                 "ancestral_1000,ancestral,1000,2.0\n")
    (reports / "samples").mkdir()
    frames = np.zeros((2, 4, 1, 8, 8))
    np.savez(reports / "samples" / "samples.npz", samples=frames[-1], trajectory=frames, steps=np.array([1, 0]),
             labels=np.array(["t=1", "t=0"]), nfe=np.full(4, 1000.0))
    # run.json as the train stage writes it: the run id and the resolved params.
    (root / "run.json").write_text(json.dumps({"mlflow_run_id": None, "params": load_params(params).to_dict()}))
    return {"--params": params, "--data": prepared, "--reports": reports, "--run": root / "run.json",
            "--out": root / "figures"}


def stage_args(paths: dict[str, Path]) -> list[str]:
    return [str(item) for option, path in paths.items() for item in (option, path)]


def test_plot_stage_draws_every_figure_from_the_reports(tmp_path, capsys):
    paths = write_reports(tmp_path, "step,loss\n0,1.0\n1,0.5\n")
    assert plot.main(stage_args(paths)) == 0
    assert sorted(p.name for p in paths["--out"].iterdir()) == sorted(
        f"{name}.png" for name in ("loss", "bound_terms", "samples", "reverse_process", "forward_process", "schedule",
                                   "quality_nfe"))


def test_plot_stage_sets_the_experiments_view_and_the_runs_description(tmp_path, monkeypatch):
    """The view and the description are the plot stage's (ddpm.pipeline.view), no other stage's."""
    from ddpm.pipeline.tracking import COMPARE_VIEW_ID
    from ddpm.pipeline.view import NOTE_TAG, VIEW_TAG_PREFIX, compare_view_state, saved_view_state

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    paths = write_reports(tmp_path, "step,loss\n0,1.0\n1,0.5\n")
    trained = Tracker.open("ddpm", None, {})  # the train stage's run
    paths["--run"].write_text(json.dumps({**json.loads(paths["--run"].read_text()), "mlflow_run_id": trained.run_id}))
    assert plot.main(stage_args(paths)) == 0
    client = trained.client
    (run,) = client.search_runs([trained.experiment_id], filter_string=f"tags.trained_by_run = '{trained.run_id}'")
    assert run.data.tags[NOTE_TAG].startswith("Sampler: ancestral, all steps")
    assert "| fd_classifier | 2 | 0.5 |" in run.data.tags[NOTE_TAG]
    tags = client.get_experiment(trained.experiment_id).tags
    assert saved_view_state(tags[VIEW_TAG_PREFIX + COMPARE_VIEW_ID]) == compare_view_state()


def test_plot_stage_refuses_a_malformed_report_with_one_line_and_a_hint(tmp_path, capsys):
    paths = write_reports(tmp_path, "step,mse\n0,1.0\n")
    assert plot.main(stage_args(paths)) == 2
    error, hint = error_and_hint("plot", capsys.readouterr().err)
    assert error == (f"plot: error: {paths['--reports'] / 'train' / 'loss.csv'}: missing column(s) ['loss']; "
                     "header is ['step', 'mse'], expected at least ['step', 'loss']")
    assert "dvc repro" in hint
    assert not paths["--out"].exists()


def test_tracking_source_name_comes_from_the_caller(tmp_path, monkeypatch):
    """The library does not name the pipeline: the stage passes what started the run."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    named = Tracker.open("ddpm", None, {}, uri, source_name="dvc repro (stages/train.py)")
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "notebook.py")])
    default = Tracker.open("ddpm", None, {}, uri)
    for tracker in (named, default):
        tracker.finish()
    sources = [tracker.client.get_run(tracker.run_id).data.tags["mlflow.source.name"] for tracker in (named, default)]
    assert sources == ["dvc repro (stages/train.py)", str(tmp_path / "notebook.py")]


def test_dvc_parses_yaml_with_ruamels_c_parser():
    """Every dvc command parses dvc.yaml, dvc.lock and params.yaml with ruamel.yaml's safe loader
    (dvc.utils.serialize.parse_yaml), 4x faster in C on this repository's dvc.lock
    (benchmarks/README.md); ruamel.yaml 0.19 no longer installs its C extension, so
    pyproject.toml lists ruamel.yaml.clib."""
    from ruamel.yaml import YAML
    from ruamel.yaml.main import CParser

    assert CParser is not None, "ruamel.yaml.clib is not installed: DVC parses YAML in pure Python"
    assert YAML(typ="safe").Parser is CParser


def test_dvc_yaml_lists_every_ddpm_module_each_stage_imports():
    """Declared deps cannot go stale: import each stage in a fresh interpreter and compare (a
    directory listed stands for all its modules). (One
    interpreter imports torch, which no ddpm module is needed for, then forks a child per stage:
    torch's import is most of a stage's start-up.)"""
    stages_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    # Each loaded ddpm module's own file (a package's is its __init__.py), relative to the repo.
    code = ("import importlib, json, os, sys, torch\n"
            "assert not any(n == 'ddpm' or n.startswith('ddpm.') for n in sys.modules)\n"
            "for name in sys.argv[1:]:\n"
            "    pid = os.fork()\n"
            "    if pid == 0:\n"
            "        importlib.import_module('stages.' + name)\n"
            "        print(json.dumps([name, [os.path.relpath(m.__file__) for n, m in sys.modules.items()\n"
            "                                 if n == 'ddpm' or n.startswith('ddpm.')]]), flush=True)\n"
            "        os._exit(0)\n"
            "    assert os.waitpid(pid, 0)[1] == 0, name\n")
    out = subprocess.run([sys.executable, "-c", code, *stages_yaml], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    imported = {name: set(files) for name, files in map(json.loads, out.splitlines())}
    assert sorted(imported) == sorted(stages_yaml)
    for name, stage in stages_yaml.items():
        files = imported[name]
        # A listed directory stands for every module in it: the stage must import them all.
        declared = set()
        for dep in (d for d in stage["deps"] if d.startswith("ddpm/")):
            path = REPO / dep
            declared |= {str(p.relative_to(REPO)) for p in path.rglob("*.py")} if path.is_dir() else {dep}
        assert files == declared, f"stage {name}: imports {sorted(files - declared)} undeclared, " \
                                  f"declares {sorted(declared - files)} unused"
        assert f"stages/{name}.py" in stage["deps"]
