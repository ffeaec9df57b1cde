"""One loader for every face (CLI, web demo, scripts): settings -> a ready Pipeline."""
from __future__ import annotations

from dataclasses import dataclass

from .config import OFFICIAL_PATCH_NUMS_256
from .cpu_memory import keep_freed_cpu_memory
from .devices import resolve_device, set_threads
from .errors import ConfigError
from .pipeline import Pipeline


@dataclass
class LoadSettings:
    """Where the model comes from and how it runs. Defaults: the embedded model, eager fp32 on CPU."""

    checkpoint: str | None = None  # var-engine checkpoint directory (None: the embedded default model)
    official_vae: str | None = None  # official release files (.pth / .safetensors / hf://...), both or neither
    official_var: str | None = None
    patch_nums: tuple[int, ...] = OFFICIAL_PATCH_NUMS_256  # scales of an official model
    num_heads: int | None = None  # heads of an official model (None: its depth)
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (None or 0: torch's choice)
    attention: str = "auto"
    linear: str = "auto"
    runner: str = "eager"
    compile_mode: str = "default"
    compile_granularity: str = "auto"
    precision: str = "fp32"
    keep_freed_memory: bool = True  # glibc keeps freed CPU memory for reuse (process-wide, see cpu_memory)


def load_pipeline(settings: LoadSettings | None = None) -> Pipeline:
    """Check the settings, then load and configure the pipeline; every failure is a VarEngineError."""
    s = settings or LoadSettings()
    device = resolve_device(s.device)
    set_threads(s.threads)
    if bool(s.official_vae) != bool(s.official_var):
        raise ConfigError("official weights come in pairs: give both the VQVAE (--official-vae) and the VAR "
                          "(--official-var) file")
    if s.keep_freed_memory:
        keep_freed_cpu_memory()
    if s.official_vae:
        pipe = Pipeline.from_official(s.official_vae, s.official_var, patch_nums=s.patch_nums,
                                      num_heads=s.num_heads, device=device, attention=s.attention)
    else:
        pipe = Pipeline.from_pretrained(s.checkpoint, device=device, attention=s.attention)
    pipe.autocast(s.precision)  # checks the precision fits the device before any work
    return pipe.with_linear(s.linear).with_runner(s.runner, s.compile_mode, s.compile_granularity)
