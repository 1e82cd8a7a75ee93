"""Peak memory of a pass: CUDA's allocator peak on a GPU, the process's peak resident memory on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MemoryMeter:
    """Peak memory while a pass runs: CUDA's allocator peak on a GPU, the process's peak RSS on CPU.

    On CPU, torch allocates tensors outside Python's allocator (so `tracemalloc` does not see them); the kernel's
    high-water mark of resident memory (`VmHWM`, reset through `/proc/self/clear_refs`) does. `extra_bytes` is the
    peak minus the resident memory when the pass started (the model, paged in first, and everything already
    loaded); free heap memory is returned to the OS first (`malloc_trim`), so reusing it counts.
    """

    device: torch.device
    model: nn.Module | None = None
    start_bytes: int = 0
    exact: bool = True
    results: dict = field(default_factory=dict)

    def __enter__(self):
        if self.model is not None and self.device.type != "cuda":
            _page_in(self.model)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            release_free_heap()
            try:  # "5" resets the peak RSS to the current RSS (Linux >= 4.0)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.exact = False  # then the peak since the process started is all there is
            self.start_bytes = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_status("VmHWM")
        self.results.update(device=str(self.device), start_bytes=self.start_bytes, peak_bytes=peak,
                            extra_bytes=max(0, peak - self.start_bytes), exact=self.exact)
        return False


def _page_in(model: nn.Module) -> None:
    """Read one value per memory page of every CPU parameter: weights that from_pretrained left memory-mapped would
    otherwise become resident during the pass and count as memory the pass allocated."""
    with torch.no_grad():
        for p in model.parameters():
            if p.device.type == "cpu" and p.numel():
                p.detach().reshape(-1)[:: max(1, 4096 // p.element_size())].sum()


def release_free_heap() -> None:
    """Return glibc's free heap pages to the OS, so memory freed before the pass and reused by it counts as new
    resident memory (otherwise the peak RSS misses it and the measured extra is too low)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is a lower bound then
        pass


def _proc_status(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: the peak since the process started

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if os.uname().sysname == "Darwin" else 1024)
