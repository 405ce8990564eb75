"""Where the code runs: device, precision, seeding and the torchrun process group.

The math modules follow ``x.device``; only this module (and the training loop that
calls it) knows about devices, autocast and distributed ranks.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ddpm.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} is not available on this machine; accepted here: auto, cpu")
    return device


def cpu_has_bf16_units() -> bool:
    """Whether this CPU runs bf16 matrix products natively (AMX or AVX512-BF16, e.g. Intel Xeon
    since Sapphire Rapids, AMD Zen 4): oneDNN's bf16 convolutions then beat fp32 for the U-Nets
    (benchmarks/README.md); elsewhere bf16 is emulated and slower."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu, torch >= 2.3
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: torch.device, network: str = "unet") -> torch.dtype:
    """The autocast dtype of the network's forward in training.

    ``auto`` is bf16 where the hardware runs it natively and it pays: CUDA GPUs with bf16
    (compute capability >= 8.0), and on the CPU the U-Net when the CPU has bf16 units
    (:func:`cpu_has_bf16_units`). Elsewhere, and for the small MLP of 2-D data (whose casts cost
    more than its tiny matmuls save), it is float32.
    """
    if precision == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        else:
            native = network == "unet" and cpu_has_bf16_units()
        return torch.bfloat16 if native else torch.float32
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision='fp16' needs a CUDA device; accepted on the CPU: auto, fp32, bf16")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _flushing_denormals() -> bool:
    # With DAZ set, a float32 subnormal input reads as zero (this runs on the calling thread).
    return float(torch.tensor([1e-39]) * 1.0) == 0.0


@contextlib.contextmanager
def flush_denormals(device: torch.device) -> Iterator[None]:
    """On the CPU, treat subnormal floats (below 1.2e-38 in float32) as zero for the duration,
    then restore the previous setting; a no-op on other devices, where the GPU's own rules apply.

    Early in training (the lr warmup, with zero-initialised output layers) gradients and
    Adam's second moments fall into the subnormal range, where x86 cores slow down by orders of
    magnitude (benchmarks/README.md has the cost on a U-Net step). Flushing changes only values
    far below anything the training can resolve.
    """
    previous = _flushing_denormals()
    # set_flush_denormal says whether the CPU supports it; asked with the current setting.
    if device.type != "cpu" or not torch.set_flush_denormal(previous):
        yield  # the CPU cannot flush (no DAZ/FTZ, e.g. not x86): nothing to change
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast for the network only; a no-op for float32 (nanoGPT's nullcontext rule)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a torchrun job (rank 0 of 1 under plain ``python``)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """Read torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def print0(*args, **kwargs) -> None:
    """Print on rank 0 only, to stderr so stdout stays clean for tools."""
    if dist_info().is_main:
        print(*args, file=sys.stderr, flush=True, **kwargs)


def set_tf32(enabled: bool) -> None:
    """TF32 tensor-core math for matmuls and convolutions on CUDA (no effect on the CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def shard(n: int, dist: DistInfo) -> range:
    """This rank's share of items 0..n-1 (every world_size-th, starting at its rank)."""
    return range(dist.rank, n, dist.world_size)


def gather_to_main(obj, dist: DistInfo) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0 (None elsewhere); [obj] without DDP."""
    if not dist.distributed:
        return [obj]
    out = [None] * dist.world_size if dist.is_main else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def init_distributed(device: torch.device, dist: DistInfo) -> torch.device:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU); the rank's device."""
    if not dist.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def launch_torchrun(nproc: int, argv: list[str] | None, module: str) -> None:
    """Run ``python -m module argv`` as ``nproc`` processes on this machine through torchrun
    (``torch.distributed.run``); raises when a process fails. Multi-node jobs call torchrun
    directly with its rendezvous flags."""
    from torch.distributed.run import main as torchrun

    args = list(sys.argv[1:] if argv is None else argv)
    torchrun(["--standalone", f"--nproc_per_node={nproc}", "-m", module, *args])


def set_threads(num_threads: int) -> None:
    if num_threads > 0:
        torch.set_num_threads(num_threads)
