"""The CPU dry run of benchmarks/gpu_check.py (the one prepared check for a GPU machine): every
section is recorded, the tiny run through the real stages passes with each MLflow item found, the
markdown table is written, and a section forced to fail is recorded while the others still run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # about a minute on 2 CPU cores: eight stage processes dominate


def test_cpu_dry_run_records_every_section_and_a_forced_failure(tmp_path):
    out = tmp_path / "gpu_check"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--out", str(out),
                           "--fail-section", "train_step"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: a section failed
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == ["install_wheels", "gpu_tests", "stage_run", "train_step", "bound_and_sampling"]
    assert sections["install_wheels"]["status"] == "skipped"  # no --wheels
    assert all(rec["peak_gpu_memory_mib"] is None for rec in sections.values())  # the CPU: no GPU memory
    assert all(isinstance(rec["seconds"], float) for rec in sections.values())

    tests = sections["gpu_tests"]
    assert tests["status"] == "passed", tests
    assert tests["result"]["skipped"] > 0 and tests["result"]["passed"] == tests["result"]["failed"] == 0

    stage_run = sections["stage_run"]
    assert stage_run["status"] == "passed", stage_run
    assert set(stage_run["result"]["stages"]) == {"prepare", "train", "sample", "evaluate", "classifier", "quality",
                                                  "report", "plot"}
    items = stage_run["result"]["mlflow"]
    assert set(items) == {"params", "loss_curve", "bpd", "samples_image", "model_artifact"}
    assert all(item["found"] for item in items.values()), items
    assert items["bpd"]["detail"] == pytest.approx(stage_run["result"]["bpd"])
    assert (out / "stage_run" / "mlflow.db").is_file()

    forced = sections["train_step"]
    assert forced["status"] == "failed" and "forced failure" in forced["error"]
    bound = sections["bound_and_sampling"]  # the section after the failed one still ran
    assert bound["status"] == "passed", bound
    assert set(bound["result"]["sampling"]) == {"ancestral", "ddim"}
    assert bound["result"]["sampling"]["ancestral"]["samples_per_s"] > 0
    assert isinstance(bound["result"]["bound_overhead_pct"], float)
    assert report["ok"] is False

    table = (out / "gpu_check.md").read_text()
    assert "| section | status |" in table
    for name in sections:
        assert f"| {name} |" in table
    assert "forced failure" in table
    assert not list(out.glob("*.tmp*"))  # written atomically: no temp file left


def test_train_step_section_measures_ours_on_the_cpu_tiny(tmp_path):
    """The section the test above forces to fail, on its own: eager img/s and FLOPs; no MFU on a CPU."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import argparse

    import gpu_check
    import torch

    result = gpu_check.train_step(argparse.Namespace(tiny=True), torch.device("cpu"))
    ours = result["sides"]["ours_eager"]
    assert result["batch"] == 4 and ours["img_per_s_median"] > 0 and ours["flops_per_image"] > 0
    assert ours["mfu"] is None and result["bf16_peak_tflops"] is None
    assert gpu_check.bf16_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu_check.bf16_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu_check.bf16_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.bf16_peak_flops("Tesla T4") is None


def test_the_check_collects_every_file_that_holds_a_gpu_test(request):
    """gpu_check runs `pytest -m gpu` on the files it finds by text; every file in which pytest
    finds a gpu-marked test must be among them (checked against this session's collection, which
    is the whole suite when the suite runs; selected alone, fewer files, and the check still holds)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    found = set(gpu_check.gpu_test_files())
    assert {"tests/pipeline/test_gpu.py", "tests/training/test_train_state.py", "tests/test_diffusion.py"} <= found
    marked = {item.path.relative_to(REPO).as_posix() for item in request.session.items
              if item.get_closest_marker("gpu")}
    assert marked <= found, marked - found
