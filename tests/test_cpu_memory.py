"""The allocator setting keeps freed CPU memory in the process (glibc) and is a no-op elsewhere."""
import platform
import subprocess
import sys

import pytest

from var_engine import cpu_memory

# allocates and frees a 256 MiB tensor, then prints the resident-set growth that remains, in MiB
PROBE = """
import os, sys, torch
from var_engine.cpu_memory import keep_freed_cpu_memory
applied = keep_freed_cpu_memory() if sys.argv[1] == "keep" else False
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
before = rss()
x = torch.ones(64 << 20)
del x
print(applied, (rss() - before) >> 20)
"""


def probe(setting: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, check=True)
    applied, kept_mib = out.stdout.split()
    return applied == "True", int(kept_mib)


@pytest.mark.skipif(cpu_memory.glibc_malloc() is None, reason="needs Linux with glibc's malloc")
def test_freed_memory_stays_in_the_process_only_with_the_setting():
    applied, kept = probe("keep")
    assert applied and kept >= 250  # the freed 256 MiB block stays resident for reuse
    applied, kept = probe("default")
    assert not applied and kept < 16  # glibc unmaps a block that size as soon as it is freed


def test_no_effect_without_glibc(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("musl", "1.2"))
    assert cpu_memory.glibc_malloc() is None
    assert cpu_memory.keep_freed_cpu_memory() is False
