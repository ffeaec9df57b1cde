"""Process-wide CPU allocator setting: keep freed memory for reuse instead of returning it to the OS.

PyTorch's CPU tensors come from malloc. glibc serves blocks above its mmap threshold (at most 32 MB)
with fresh mappings and unmaps them when freed, and trims the heap's free top; the next tensor of
that size then page-faults its memory in again, one 4 KiB page at a time. Generation allocates and
frees activations of the same sizes at every scale, so on CPU a good share of its time can go to
page faults. With mmap off and trimming off, freed blocks stay in the heap and are reused: the
process keeps its high-water mark of memory, as PyTorch's CUDA caching allocator does on a GPU.
"""
from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h); setting M_MMAP_THRESHOLD also turns off its dynamic adjustment
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
KEEP_ALL = 2 ** 31 - 1  # the largest value mallopt takes: never trim


def glibc_malloc() -> ctypes.CDLL | None:
    """The process's glibc, or None where malloc is not glibc's (macOS, Windows, musl)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_cpu_memory() -> bool:
    """Make freed CPU memory stay in this process for reuse (glibc only). Returns whether it took effect.

    Irreversible for the blocks already kept; affects every allocation in the process, not only
    var-engine's. Worth it for a process that generates repeatedly; see the module docstring.
    """
    libc = glibc_malloc()
    if libc is None or not hasattr(libc, "mallopt"):
        log.info("allocator setting skipped: malloc is not glibc's")
        return False
    ok = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL))
    if not ok:
        log.warning("glibc refused the allocator setting; freed memory is still returned to the OS")
    return ok
