"""Helpers the benchmark scripts share: where they run, how they time, how their timings are
summarised and printed, and the random-weight networks they time."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from ddpm.config import Params
from ddpm.pipeline.build import build_network


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): a busy machine skews timings."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def environment(device: torch.device, quick: bool) -> dict[str, Any]:
    """Where the benchmark runs, recorded with its figures."""
    return {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "quick": quick, "load_avg_start": load_average()}


def machine_is_busy(device: torch.device, load: float | None) -> bool:
    """A CPU benchmark on a machine already loaded past half its cores gives slow, noisy figures."""
    return device.type == "cpu" and load is not None and load > 0.5 * (os.cpu_count() or 1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()``, with the device synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def timed_steps(step: Callable[[], Any], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    return timed(lambda: [step() for _ in range(steps)], device)


def median_range(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_range(stats: dict[str, float], digits: int = 3) -> str:
    """``median [min-max]``."""
    return f"{stats['median']:,.{digits}f} [{stats['min']:,.{digits}f}-{stats['max']:,.{digits}f}]"


def batches(data: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    """Consecutive ``batch``-row slices of ``data`` without end: a benchmark's training steps
    walk through a small fixed dataset, restarting where a whole batch no longer fits."""
    position = 0
    while True:
        yield data[position:position + batch]
        position = (position + batch) % (data.shape[0] - batch + 1)


def eval_network(params: Params, meta: dict[str, Any], device: torch.device) -> nn.Module:
    """The params' network with random weights, in eval mode; the zero-initialised output
    conv gets PyTorch's default init so that the outputs are nonzero, as after training
    (speed does not depend on the weights)."""
    net = build_network(params, meta)
    net.out[-1].reset_parameters()
    return net.to(device).eval().requires_grad_(False)


def random_levels(n: int, shape: tuple[int, ...], levels: int, seed: int, dtype=np.int64) -> np.ndarray:
    """Integer grey levels, uniform on the K-level grid."""
    return np.random.default_rng(seed).integers(0, levels, size=(n, *shape), dtype=dtype)
