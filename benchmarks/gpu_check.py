"""One prepared check for a machine with one CUDA GPU: everything it measures in one JSON and one
markdown table, in under 8 minutes on one H100.

Sections, each timed, each caught (a failure is recorded with its error text and the rest still run):

- ``install_wheels`` (only with ``--wheels DIR``): ``pip install --no-index --find-links DIR -r
  benchmarks/gpu_requirements.txt`` (the wheels of ``benchmarks/download_gpu_wheels.sh``);
- ``gpu_tests``: ``python -m pytest -q -m gpu tests/`` in a subprocess, its passed / failed / skipped /
  error counts (on the CPU they skip);
- ``stage_run``: a tiny digits run through the real stages (prepare, train, sample, evaluate, classifier,
  quality, report, plot: the command lines of dvc.yaml, ``train.device`` set to ``--device``), logging to
  a sqlite MLflow store in the out folder; then MlflowClient reads back the run's params, its ``loss``
  curve, ``bpd``, an image under ``samples`` and the model artifact (pass / fail per item);
- ``train_step``: the CIFAR-10 U-Net of ``DATASET_DEFAULTS`` (35.7M parameters, batch 128), the train
  stage's own step (``setup_training`` + ``train_step``) in bf16 autocast, eager and ``torch.compile``d,
  and diffusers' ``UNet2DModel`` in DDPM's CIFAR-10 configuration (the same 35.7M parameters) when
  diffusers imports, rounds alternating: images/s, FLOPs per image (``FlopCounterMode``) and MFU against
  the GPU's bf16 dense peak (``BF16_PEAK_TFLOPS``; null when unknown). ``--tiny``: a tiny U-Net, batch 4,
  2 steps, no compile;
- ``bound_and_sampling``: the full bound's overhead over the T forward passes it makes
  (``bench_core.bound_vs_forward_case``, the digits U-Net) and ancestral and DDIM samples/s
  (``ddpm.sampling.runner.draw_samples``, the sample stage's code).

Each section records its peak GPU memory (``torch.cuda.max_memory_allocated``, reset before it; null on
the CPU and for the sections that run in subprocesses).

    python benchmarks/gpu_check.py --wheels wheels/gpu --out gpu_check_out     # on the GPU machine
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/gpu_check    # the CPU dry run (the test)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks"), str(REPO / "tests" / "e2e")]

import torch  # noqa: E402
import yaml  # noqa: E402
from _common import batches, environment, eval_network, random_levels, sync  # noqa: E402

SECTIONS = ("install_wheels", "gpu_tests", "stage_run", "train_step", "bound_and_sampling")
STAGES = ("prepare", "train", "sample", "evaluate", "classifier", "quality", "report", "plot")
# bf16 dense peak in TFLOP/s by device name (first match; "H100" without "PCIe" is the SXM part).
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
# diffusers' UNet2DModel as google/ddpm-cifar10-32 configures it: DDPM's CIFAR-10 U-Net, 35.7M parameters.
DIFFUSERS_CIFAR10 = {"block_out_channels": (128, 256, 256, 256), "layers_per_block": 2,
                     "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                     "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")}
# Smaller still than the end-to-end test's TINY (its steps and image counts): the stages' start-up dominates.
STAGE_RUN = {"train": {"steps": 10, "warmup_steps": 2, "log_every": 5, "checkpoint_every": 10, "bound_every": 5},
             "sample": {"num_samples": 8}, "evaluate": {"num_images": 16}, "ode": {"num_images": 2},
             "classifier": {"steps": 10}}
TINY_MODEL = {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": [16]}


def bf16_peak_flops(name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops * 1e12
    return None


def tail(text: str, n: int = 3000) -> str:
    return text[-n:] if text else ""


# ---------------------------------------------------------------------- install_wheels
def install_wheels(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(Path(args.wheels).resolve()),
           "-r", str(REPO / "benchmarks" / "gpu_requirements.txt")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed ({proc.returncode}):\n{tail(proc.stdout)}\n{tail(proc.stderr)}")
    return {"command": shlex.join(cmd), "pip_tail": tail(proc.stdout, 600)}


# ---------------------------------------------------------------------- gpu_tests
def gpu_test_files() -> list[str]:
    """The test files that mark a test ``gpu`` (``pytest.mark.gpu``). The check collects these
    alone: collecting the whole suite to select a few tests took 8 of the section's 13 s on 2 CPU
    cores. (tests/benchmarks/test_gpu_check.py checks this list against pytest's own collection.)"""
    return sorted(p.relative_to(REPO).as_posix() for p in (REPO / "tests").rglob("test_*.py")
                  if "mark.gpu" in p.read_text())


def gpu_tests(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    # --continue-on-collection-errors: a test file whose imports fail here (e.g. torch-fidelity, not
    # on the GPU machine) is counted as an error, and the gpu tests of the other files still run.
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", *gpu_test_files(), "-p", "no:cacheprovider",
           "--continue-on-collection-errors"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=subprocess_env())
    summary = next((line for line in reversed(proc.stdout.splitlines()) if re.search(r"\d+ (passed|skipped|"
                    r"failed|error|deselected)", line)), "")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", summary)}
    counts["errors"] = counts.pop("error", 0) + counts.pop("errors", 0)
    out = {"command": shlex.join(cmd), "returncode": proc.returncode, "summary": summary.strip("= "),
           **{k: counts.get(k, 0) for k in ("passed", "failed", "skipped", "errors", "deselected")}}
    if device.type == "cpu":
        out["note"] = "no CUDA device: the gpu tests skip"
    # pytest's 5: nothing collected; 1: some failed (a collection error alone still returns 1).
    if out["failed"] or (proc.returncode not in (0, 5) and not (out["errors"] and not out["failed"])):
        out["output_tail"] = tail(proc.stdout)
        raise SectionFailed(out, f"gpu tests: {out['summary']}")
    if out["errors"]:
        out["output_tail"] = tail(proc.stdout)
    return out


# ---------------------------------------------------------------------- stage_run
def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def stage_params(device: torch.device) -> dict[str, Any]:
    from test_pipeline_e2e import TINY, deep_update

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return deep_update(deep_update(params, json.loads(json.dumps(TINY))),
                       json.loads(json.dumps(STAGE_RUN)) | {"train": STAGE_RUN["train"] | {"device": device.type}})


def stage_commands(params_file: Path) -> list[tuple[str, list[str]]]:
    """Each stage's command line from dvc.yaml, with this interpreter and ``--params params_file``."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    out = []
    for name in STAGES:
        argv = shlex.split(stages[name]["cmd"])
        assert argv[:3] == ["python", "-m", f"stages.{name}"], argv
        out.append((name, [sys.executable, *argv[1:], "--params", str(params_file)]))
    return out


def stage_run(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    work = Path(args.out).resolve() / "stage_run"
    work.mkdir(parents=True, exist_ok=True)
    params_file = Path(tempfile.mkdtemp(prefix="gpu_check_params_")) / "params.yaml"
    params_file.write_text(yaml.safe_dump(stage_params(device), sort_keys=False))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    env = subprocess_env(MLFLOW_TRACKING_URI=uri)
    out: dict[str, Any] = {"workdir": str(work), "tracking_uri": uri, "stages": {}}
    for name, cmd in stage_commands(params_file):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        out["stages"][name] = {"seconds": round(time.perf_counter() - t0, 2), "returncode": proc.returncode}
        if proc.returncode != 0:
            out["stages"][name]["stderr_tail"] = tail(proc.stderr)
            raise SectionFailed(out, f"stage {name} failed ({proc.returncode}): {tail(proc.stderr, 1500)}")
    out["mlflow"] = mlflow_items(uri, json.loads((work / "models" / "run.json").read_text())["mlflow_run_id"])
    out["bpd"] = json.loads((work / "reports" / "metrics.json").read_text())["bpd"]["total"]
    missing = [k for k, v in out["mlflow"].items() if not v["found"]]
    if missing:
        raise SectionFailed(out, f"not in the MLflow run: {', '.join(missing)}")
    return out


def mlflow_items(uri: str, run_id: str) -> dict[str, dict[str, Any]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    loss = client.get_metric_history(run_id, "loss")
    samples = [f.path for f in client.list_artifacts(run_id, "samples")]
    model = [f.path for f in client.list_artifacts(run_id, "model")]
    return {
        "params": {"found": len(run.data.params) > 0 and "train.steps" in run.data.params,
                   "detail": f"{len(run.data.params)} params"},
        "loss_curve": {"found": len(loss) > 0, "detail": f"{len(loss)} points"},
        "bpd": {"found": "bpd" in run.data.metrics, "detail": run.data.metrics.get("bpd")},
        "samples_image": {"found": any(p.endswith(".png") for p in samples), "detail": samples},
        "model_artifact": {"found": any(p.endswith(".pt") for p in model), "detail": model},
    }


# ---------------------------------------------------------------------- train_step
def train_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from _diffusers_peer import diffusers_available, diffusers_train_step
    from _peer import count_flops

    from ddpm.config import Params
    from ddpm.data import to_model_space
    from ddpm.nn import count_parameters
    from ddpm.pipeline.runtime import flush_denormals
    from ddpm.training.loop import batch_draws, seed_dropout, setup_training
    from ddpm.training.loop import train_step as one_step

    shape, levels = (3, 32, 32), 256
    batch = 4 if args.tiny else 128
    steps, rounds = (2, 1) if args.tiny else (10, 3)
    model = TINY_MODEL if args.tiny else {}
    meta = {"kind": "image", "shape": list(shape), "num_levels": levels}
    data = torch.as_tensor(to_model_space(random_levels(4 * batch, shape, levels, 0, dtype="uint8"), levels)).to(device)

    def ours(precision: str, compiled: bool) -> tuple[Callable[[], None], int]:
        params = Params.from_dict({"dataset": "cifar10", "model": model,
                                   "train": {"precision": precision, "batch_size": batch, "compile": compiled}})
        trainer = setup_training(params, meta, device)
        trainer.state.model.train()
        data_batches = batches(data, batch)

        def step() -> None:
            s = trainer.state.step
            t, noise, _ = batch_draws(params, s, shape, device, trainer.objective)
            seed_dropout(params.seed, s, 0, device)
            with flush_denormals(device):
                one_step(trainer, next(data_batches), t, noise)

        return step, count_parameters(trainer.state.model)

    sides: dict[str, Callable[[], None]] = {}
    out: dict[str, Any] = {"batch": batch, "steps_per_round": steps, "rounds": rounds, "precision": "bf16",
                           "sides": {}}
    fp32_step, n_params = ours("fp32", False)
    flops = count_flops(fp32_step) // batch  # per image, forward + backward (autocast does not change the count)
    out["sides"]["ours_eager"] = {"parameters": n_params, "flops_per_image": flops}
    del fp32_step
    sides["ours_eager"], _ = ours("bf16", False)
    if not args.tiny:
        sides["ours_compiled"], _ = ours("bf16", True)
        out["sides"]["ours_compiled"] = {"parameters": n_params, "flops_per_image": flops}
    why_not = diffusers_available()
    if why_not is None:
        from diffusers import UNet2DModel

        config = DIFFUSERS_CIFAR10 if not args.tiny else {
            "block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8,
            "down_block_types": ("DownBlock2D", "AttnDownBlock2D"), "up_block_types": ("AttnUpBlock2D", "UpBlock2D")}
        torch.manual_seed(0)
        net = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, dropout=0.1, **config).to(device)
        d_flops = count_flops(diffusers_train_step(net, data, batch, torch.float32, 0)) // batch
        sides["diffusers"] = diffusers_train_step(net, data, batch, torch.bfloat16, 0)
        out["sides"]["diffusers"] = {"parameters": count_parameters(net), "flops_per_image": d_flops}
    else:
        out["diffusers"] = f"not measured: {why_not}"
    # Warm-up (and, for the compiled side, compilation), timed apart.
    for name, step in sides.items():
        t0 = time.perf_counter()
        step()
        sync(device)
        out["sides"][name]["first_step_s"] = round(time.perf_counter() - t0, 3)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, step in sides.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            times[name].append((time.perf_counter() - t0) / steps)
    peak = bf16_peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    out["bf16_peak_tflops"] = peak / 1e12 if peak else None
    for name, ts in times.items():
        side = out["sides"][name]
        side["img_per_s"] = [batch / t for t in ts]
        rate = batch / statistics.median(ts)
        side["img_per_s_median"] = rate
        side["mfu"] = side["flops_per_image"] * rate / peak if peak else None
    return out


# ---------------------------------------------------------------------- bound_and_sampling
def bound_and_sampling(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from bench_core import DIGITS_META, bound_vs_forward_case

    from ddpm.config import Params
    from ddpm.pipeline.build import build_diffusion
    from ddpm.pipeline.runtime import set_tf32
    from ddpm.sampling.runner import draw_samples

    set_tf32(False)  # as the evaluate stage does
    params = Params.from_dict({"timesteps": 50, "model": TINY_MODEL | {"attn_resolutions": [4]}} if args.tiny
                              else {})  # the digits defaults
    torch.manual_seed(0)
    net = eval_network(params, DIGITS_META, device)
    diffusion = build_diffusion(params)
    reps = 1 if args.tiny else 3
    # bench_core's first row: the evaluate stage's network batch of 300 (12 images x 25 timesteps per call).
    bound = bound_vs_forward_case(net, diffusion, device, reps, 0, 512, 12, 300)
    out: dict[str, Any] = {"timesteps": diffusion.num_timesteps, "bound_vs_forward": bound,
                           "bound_overhead_pct": bound["bound_overhead_pct"], "sampling": {}}
    n = 8 if args.tiny else 256
    for sampler, steps in (("ancestral", 0), ("ddim", 10 if args.tiny else 100)):
        def draw(sampler=sampler, steps=steps) -> None:
            draw_samples(diffusion, net, (n, 1, 8, 8), seed=0, batch_size=n, sampler=sampler, steps=steps,
                         device=device)

        seconds = timed(draw, device)
        nfe = steps or diffusion.num_timesteps
        out["sampling"][sampler] = {"samples": n, "nfe": nfe, "seconds": seconds, "samples_per_s": n / seconds}
    return out


# ---------------------------------------------------------------------- running and writing
class SectionFailed(Exception):
    """A section's failure that keeps what it measured before failing."""

    def __init__(self, partial: dict[str, Any], message: str) -> None:
        super().__init__(message)
        self.partial = partial


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    from _common import timed as common_timed

    fn()  # warm-up
    return common_timed(fn, device)


def run_section(name: str, fn: Callable[[argparse.Namespace, torch.device], dict[str, Any]],
                args: argparse.Namespace, device: torch.device, in_process: bool) -> dict[str, Any]:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    record: dict[str, Any] = {"status": "passed"}
    try:
        if name in args.fail_section:
            raise RuntimeError(f"forced failure of section {name} (--fail-section)")
        record["result"] = fn(args, device)
    except SectionFailed as err:
        record.update(status="failed", error=str(err), result=err.partial)
    except Exception as err:  # noqa: BLE001  one section's failure must not stop the others
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-4000:])
    record["seconds"] = round(time.perf_counter() - t0, 2)
    record["peak_gpu_memory_mib"] = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda and in_process
                                     else None)
    print(f"[gpu_check] {name}: {record['status']} in {record['seconds']} s"
          + (f" ({record['error'][:300]})" if "error" in record else ""), flush=True)
    return record


def figures(name: str, rec: dict[str, Any]) -> str:
    """The section's headline figures, for the markdown table."""
    r = rec.get("result") or {}
    try:
        if name == "gpu_tests":
            return ", ".join(f"{r[k]} {k}" for k in ("passed", "failed", "skipped", "errors") if k in r)
        if name == "stage_run":
            items = r.get("mlflow", {})
            stages = ", ".join(f"{k} {v['seconds']} s" for k, v in r.get("stages", {}).items())
            found = ", ".join(f"{k} {'ok' if v['found'] else 'MISSING'}" for k, v in items.items())
            return f"{stages}; MLflow: {found}" + (f"; bpd {r['bpd']:.3f}" if "bpd" in r else "")
        if name == "train_step":
            parts = [f"batch {r['batch']}"]
            for side, s in r.get("sides", {}).items():
                mfu = f", MFU {100 * s['mfu']:.1f}%" if s.get("mfu") is not None else ", MFU n/a"
                parts.append(f"{side}: {s['parameters'] / 1e6:.1f}M params, "
                             f"{s.get('img_per_s_median', float('nan')):,.1f} img/s, "
                             f"{s['flops_per_image'] / 1e9:.2f} GFLOP/img{mfu}")
            return "; ".join(parts)
        if name == "bound_and_sampling":
            s = r["sampling"]
            return (f"T={r['timesteps']}: bound overhead {r['bound_overhead_pct']:+.1f}% over the forward passes; "
                    + "; ".join(f"{k} {v['samples_per_s']:,.1f} samples/s ({v['nfe']} NFE)" for k, v in s.items()))
        if name == "install_wheels":
            return "installed"
    except (KeyError, TypeError, ValueError):
        pass
    return ""


def markdown(report: dict[str, Any]) -> str:
    env = report["env"]
    lines = [f"# gpu_check: {env['device_name']} ({env['device']}), torch {env['torch']}, "
             f"{'tiny' if report['tiny'] else 'full'}, {report['seconds']:.1f} s", "",
             "| section | status | seconds | peak GPU MiB | figures |", "| --- | --- | ---: | ---: | --- |"]
    for name, rec in report["sections"].items():
        mem = rec.get("peak_gpu_memory_mib")
        text = figures(name, rec) if rec["status"] != "skipped" else rec.get("reason", "")
        if "error" in rec:
            text = f"{text} ERROR: {rec['error'][:400]}".strip()
        text = text.replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {rec['status']} | {rec.get('seconds', 0):.1f} | "
                     f"{'' if mem is None else f'{mem:,.0f}'} | {text} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and the stage run")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny networks and batches, no compile (the CPU dry run)")
    parser.add_argument("--wheels", help="install benchmarks/gpu_requirements.txt from this folder of wheels first")
    parser.add_argument("--fail-section", action="append", default=[], choices=SECTIONS,
                        help="force this section to fail (to test that the others still run)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (use --device cpu)")
    t0 = time.perf_counter()
    report: dict[str, Any] = {"env": environment(device, args.tiny), "tiny": args.tiny, "argv": sys.argv[1:],
                              "sections": {}}
    sections = {"install_wheels": (install_wheels, False), "gpu_tests": (gpu_tests, False),
                "stage_run": (stage_run, False), "train_step": (train_step, True),
                "bound_and_sampling": (bound_and_sampling, True)}
    for name, (fn, in_process) in sections.items():
        if name == "install_wheels" and not args.wheels:
            report["sections"][name] = {"status": "skipped", "reason": "no --wheels given", "seconds": 0.0,
                                        "peak_gpu_memory_mib": None}
            continue
        report["sections"][name] = run_section(name, fn, args, device, in_process)
    report["seconds"] = time.perf_counter() - t0
    report["ok"] = all(r["status"] != "failed" for r in report["sections"].values())
    from ddpm.io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "gpu_check.json", report)
    atomic_write_text(out / "gpu_check.md", markdown(report))
    print(markdown(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
