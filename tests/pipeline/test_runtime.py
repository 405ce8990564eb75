"""Where the code runs: what ``train.precision`` resolves to on each device and network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddpm.errors import ConfigError
from ddpm.pipeline import runtime
from ddpm.pipeline.runtime import cpu_has_bf16_units, precision_name, resolve_device, resolve_precision

CPU = torch.device("cpu")


def cpuinfo_flags() -> set[str] | None:
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def test_bf16_probe_agrees_with_the_kernel_cpu_flags():
    flags = cpuinfo_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags on this system")
    if "avx512_bf16" not in flags and "amx_tile" in flags:
        pytest.skip("AMX without AVX512-BF16: /proc/cpuinfo alone cannot say what oneDNN uses")
    assert cpu_has_bf16_units() == bool({"amx_bf16", "avx512_bf16"} & flags)


@pytest.mark.parametrize("has_units", [True, False])
def test_auto_on_the_cpu_is_bf16_for_the_unet_only_where_the_cpu_has_bf16_units(monkeypatch, has_units):
    monkeypatch.setattr(runtime, "cpu_has_bf16_units", lambda: has_units)
    assert resolve_precision("auto", CPU, "unet") == (torch.bfloat16 if has_units else torch.float32)
    # The 2-D MLP's matmuls are too small to gain from bf16: fp32 whatever the CPU.
    assert resolve_precision("auto", CPU, "mlp") == torch.float32


def test_explicit_precisions_are_kept_and_fp16_needs_cuda():
    assert resolve_precision("fp32", CPU, "unet") == torch.float32
    assert resolve_precision("bf16", CPU, "mlp") == torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device; accepted on the CPU: auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_precision_or_device_this_machine_lacks_is_a_config_error(monkeypatch):
    with pytest.raises(ConfigError, match="train.precision='fp16' needs a CUDA device"):
        resolve_precision("fp16", CPU)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device='cuda:1' is not available on this machine; accepted here: "
                                          "auto, cpu"):
        resolve_device("cuda:1")


def test_precision_names_round_trip():
    for name in ("fp32", "bf16"):
        assert precision_name(resolve_precision(name, CPU)) == name


@pytest.mark.parametrize("before", [False, True])
def test_flush_denormals_flushes_inside_and_restores_the_previous_setting(before):
    subnormal = torch.tensor([1e-39])  # float32 subnormals are below 1.18e-38
    if not torch.set_flush_denormal(before):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        with runtime.flush_denormals(CPU):
            assert float(subnormal * 1.0) == 0.0
        assert (float(subnormal * 1.0) == 0.0) is before
    finally:
        torch.set_flush_denormal(False)


def test_flush_denormals_leaves_the_cpu_alone_for_other_devices():
    with runtime.flush_denormals(torch.device("cuda")):
        assert float(torch.tensor([1e-39]) * 1.0) > 0.0
