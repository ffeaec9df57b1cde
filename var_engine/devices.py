"""Device names and thread counts from users, checked before any work starts."""
from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str | torch.device) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'mps' -> torch.device; ConfigError when it is unknown or absent here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(name)!r} needs CUDA, which is not available here (this torch build or "
                              "machine has no GPU); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(name)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {str(name)!r} is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ConfigError(f"device type {device.type!r} is not supported; use cpu or cuda")
    return device


def set_threads(threads: int | None) -> None:
    """torch's CPU thread count; None or 0 keeps torch's choice."""
    if threads is None or threads == 0:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ConfigError(f"threads must be a positive integer (or 0 for torch's choice), got {threads!r}")
    torch.set_num_threads(threads)
