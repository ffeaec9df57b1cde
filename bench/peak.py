"""Peak memory of one generate call, each measured in a fresh process.

A process that has already generated keeps freed memory for reuse, so a second call's peak hides in
memory the first one left behind (and a call after a larger one reads as zero). Each measurement
therefore runs in a child process that loads the model, makes one batch-1 warm-up call with the same
settings (lazy initialisation), then measures the call itself:
- CUDA: the growth of torch.cuda.max_memory_allocated over the memory allocated before the call;
- Linux CPU: the growth of the process's peak resident set (VmHWM, reset before the call through
  /proc/self/clear_refs) over its resident size before the call, with glibc told to return every
  freed block of 16 KiB or more to the OS (`return_freed_memory`), so the warm-up leaves nothing
  behind that the call could reuse unseen.
Both include the KV cache, activations, sampling buffers and the decoder's working memory, not the
weights. On other platforms the CPU figure is None.

Usage (one measurement): python -m bench.peak '{"model": "default", "batch": 64, "depth": 2, "switch_scale": 3}'
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from bench.common import run_module_json

STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class CallSpec:
    """One generate call: model ('default' or an official layout with random weights), batch and plan."""

    model: str
    batch: int
    depth: int | None = None  # None: the full network
    switch_scale: int | None = None
    cfg: float = 1.5
    transient_last_scale: bool = False
    draw: str = "release"
    device: str = "cpu"
    threads: int = 0  # 0: torch's default


def _status_bytes(name: str) -> int | None:
    if not STATUS.is_file():
        return None
    for line in STATUS.read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return None


def peak_rss_growth(run: Callable[[], object]) -> int | None:
    """Run `run()` and return how far the peak resident set rose above the size before it (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_bytes("VmRSS")
    run()
    peak = _status_bytes("VmHWM")
    return None if before is None or peak is None else peak - before


def return_freed_memory() -> bool:
    """Make glibc hand every freed block of 16 KiB or more back to the OS (False where malloc is not glibc's).

    glibc otherwise raises its mmap threshold to the size of each mapped block it frees (up to 32 MB),
    so the warm-up's freed blocks would stay in the heap and the measured call would reuse them unseen.
    """
    from var_engine.cpu_memory import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, glibc_malloc

    libc = glibc_malloc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 16 << 10)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 16 << 10))


def measure_here(spec: CallSpec) -> int | None:
    """The measurement itself; meaningful only in a process that has not generated before."""
    from bench.sampler import build

    return_freed_memory()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    pipe = build(spec.model, spec.device)
    labels = torch.arange(spec.batch) % pipe.config.num_classes
    settings = dict(seed=0, cfg=spec.cfg, depth=spec.depth, switch_scale=spec.switch_scale,
                    transient_last_scale=spec.transient_last_scale, draw=spec.draw)
    pipe.generate(labels[:1], **settings)
    if pipe.device.type == "cuda":  # generate resets CUDA's peak statistics and reports the call's peak
        before = torch.cuda.memory_allocated(pipe.device)
        return pipe.generate(labels, **settings).stats.peak_memory_bytes - before
    return peak_rss_growth(lambda: pipe.generate(labels, **settings))


def peak_call_bytes(spec: CallSpec, timeout: float = 1800) -> int | None:
    """Peak memory of the call `spec` describes, measured in a child process (see the module doc)."""
    return run_module_json("bench.peak", [json.dumps(asdict(spec))], timeout)["peak_bytes"]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    spec = CallSpec(**json.loads(argv[0]))
    with torch.no_grad():
        print(json.dumps({"peak_bytes": measure_here(spec)}))


if __name__ == "__main__":
    main()
