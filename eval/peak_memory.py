"""Peak memory of the phases of a benchmark, measured where the memory that runs out is.

On CUDA that is the accelerator: torch's peak allocation, reset at the start of each phase, so a
phase's figure is the most memory live at once while it ran, the models then on the device included.
Elsewhere the only figure is the process's peak resident set size, which never resets: it is no
accelerator measurement, and no phase's own (it covers everything the process did before, model
construction included), and the report says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from arpo.eval.inversion_benchmark import _peak_rss_mib

CUDA_KIND = "cuda allocated"
RSS_KIND = "process peak RSS (not an accelerator measurement)"


class PhasePeaks:
    """Peak memory per named phase on one device, in MiB."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        self.kind = CUDA_KIND if self.on_cuda else RSS_KIND
        self.allocated_mb: dict[str, float] = {}
        self.reserved_mb: dict[str, float] = {}
        """What the caching allocator held at its peak (what `nvidia-smi` shows); CUDA only."""

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        yield
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            self.allocated_mb[name] = _mib(torch.cuda.max_memory_allocated(self.device))
            self.reserved_mb[name] = _mib(torch.cuda.max_memory_reserved(self.device))
        else:
            self.allocated_mb[name] = round(_peak_rss_mib(), 1)

    @property
    def peak_mb(self) -> float | None:
        """The highest figure of any phase."""
        return max(self.allocated_mb.values(), default=None)


def _mib(size: int) -> float:
    return round(size / 2**20, 1)
