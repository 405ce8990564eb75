"""Peak memory of one benchmark round: CUDA allocated bytes, or the CPU process's peak
resident set (VmHWM, reset per round through /proc/self/clear_refs)."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource

import torch
from _common import sync


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _malloc_trim() -> None:
    """Hand freed heap back to the OS, so one round's RSS does not start at the last one's peak."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_RUN_PEAK_KIB = [0]  # the process's peak RSS over the whole run, read before each VmHWM reset


def _note_hwm() -> None:
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        _RUN_PEAK_KIB[0] = max(_RUN_PEAK_KIB[0], hwm)


def run_peak_rss_mib() -> float:
    """Peak RSS of the whole process over the run. ``ru_maxrss`` alone is not it: resetting
    VmHWM through clear_refs also lowers what getrusage reports for a live process."""
    _note_hwm()
    return max(_RUN_PEAK_KIB[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024  # KiB on Linux


class MemoryMeter:
    """Peak memory of one round: CUDA allocated bytes, or the CPU process's peak RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib: float | None = None      # above the round's start
        self.peak_abs_mib: float | None = None  # CPU: the process's peak RSS during the round

    def __enter__(self) -> MemoryMeter:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            self.start = _status_kib("VmRSS")
            _note_hwm()
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
                self.hwm_ok = True
            except OSError:
                self.hwm_ok = False
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2**20
        elif self.hwm_ok and self.start is not None:
            _note_hwm()
            hwm = _status_kib("VmHWM")
            if hwm is not None:
                self.peak_abs_mib = hwm / 1024
                self.peak_mib = (hwm - self.start) / 1024
