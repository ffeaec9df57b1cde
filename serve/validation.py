"""Server-side validation of generate and edit requests: every field checked for type, range and finiteness.

Nothing here imports gradio; errors are InputError with a message meant for the user.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from var_engine.editing import mask_from_editor
from var_engine.errors import ConfigError, InputError
from var_engine.pipeline import Pipeline

SEARCH_MODES = ("off", "tts", "best_of_n")
MAX_SEED = 2**32 - 1  # seeds stay exact as JavaScript numbers
MAX_TEXT = 200  # longest class name accepted
NO_CLASS = "none: in-paint without a class"  # the edit tab's class choice for unconditional in-painting


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_images: int = 16  # images per request
    max_budget: float = 8.0  # search compute per image, in plain samples
    max_cfg: float = 20.0
    max_memory_budget_mib: float = 1e6
    max_upload_mib: float = 8.0  # largest uploaded file (Gradio refuses bigger ones before they are stored)
    max_upload_pixels: int = 4096 * 4096  # largest uploaded image, checked before it is used
    max_subject_images: int = 16  # pictures per subject tune
    max_tune_steps: int = 300  # steps per subject tune (about 1 s each for the default model on 2 CPU cores)

    def __post_init__(self) -> None:
        if not isinstance(self.max_images, int) or self.max_images < 1:
            raise ConfigError(f"max_images must be an integer >= 1, got {self.max_images!r}")
        if not (math.isfinite(self.max_budget) and self.max_budget >= 1):
            raise ConfigError(f"max_budget must be a finite number >= 1, got {self.max_budget!r}")
        if not (math.isfinite(self.max_upload_mib) and self.max_upload_mib > 0):
            raise ConfigError(f"max_upload_mib must be a finite number > 0, got {self.max_upload_mib!r}")
        for name, least in (("max_upload_pixels", 64 * 64), ("max_subject_images", 1), ("max_tune_steps", 10)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")


@dataclass(frozen=True)
class GenerateRequest:
    """A checked request: the arguments of one Pipeline.generate call."""

    label: int  # -1: unconditional
    num_images: int
    seed: int
    cfg: float
    top_k: int
    top_p: float
    more_smooth: bool
    depth: int | None  # None: full depth (or chosen by the memory budget)
    switch_scale: int | None
    memory_budget_bytes: int | None
    search: str | None  # None, "tts" or "best_of_n"
    budget: float | None

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of Pipeline.generate (without the depth plan, which needs the pipeline)."""
        return dict(labels=[self.label] * self.num_images, seed=self.seed, cfg=self.cfg, top_k=self.top_k,
                    top_p=self.top_p, more_smooth=self.more_smooth, search=self.search, budget=self.budget)


def as_int(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer in [lo, hi] from an int, an integral finite float or a string of digits."""
    if isinstance(value, str) and len(value) <= 20:
        text = value.strip()
        if text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer in [{lo}, {hi}], got {_show(value)}")
    if not lo <= value <= hi:
        raise InputError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def as_float(name: str, value: Any, lo: float, hi: float) -> float:
    """A finite number in [lo, hi] from an int, a float or a numeric string."""
    if isinstance(value, str) and len(value) <= 40:
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number in [{lo:g}, {hi:g}], got {_show(value)}")
    value = float(value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InputError(f"{name} must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    return value


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1, None):
        return bool(value)
    raise InputError(f"{name} must be true or false, got {_show(value)}")


def as_seed(seed: Any, randomize_seed: Any = False) -> int:
    """A seed in [0, MAX_SEED]; None, -1 or randomize_seed pick a random one."""
    if as_bool("randomize seed", randomize_seed) or seed is None or (not isinstance(seed, bool) and seed == -1):
        return secrets.randbelow(MAX_SEED + 1)
    return as_int("seed", seed, 0, MAX_SEED)


def parse_request(pipe: Pipeline, limits: Limits, class_: Any, num_images: Any = 1, seed: Any = 0, cfg: Any = 1.5,
                  top_k: Any = 900, top_p: Any = 0.96, more_smooth: Any = False, randomize_seed: Any = False,
                  depth: Any = None, switch_scale: Any = None, memory_budget_mib: Any = 0, search: Any = "off",
                  budget: Any = 4.0) -> GenerateRequest:
    """Check raw inputs from a client. seed None or -1 (or randomize_seed) picks a random seed; depth None or
    the model's depth is the full network; memory_budget_mib 0 is off. Raises InputError."""
    t = pipe.config.transformer
    if isinstance(class_, str) and len(class_) > MAX_TEXT:
        raise InputError(f"class name is too long ({len(class_)} characters)")
    if isinstance(class_, (list, tuple)) and len(class_) == 1:
        class_ = class_[0]
    if class_ is None:
        raise InputError("pick a class")
    label = pipe.class_id(class_)
    num = as_int("number of images", num_images, 1, limits.max_images)
    seed_ = as_seed(seed, randomize_seed)
    cfg_ = as_float("cfg", cfg, 0.0, limits.max_cfg)
    top_k_ = as_int("top-k", top_k, 0, max(t.vocab_size, 1000))  # above the vocabulary: every token
    top_p_ = as_float("top-p", top_p, 0.0, 1.0)
    smooth = as_bool("smoothing", more_smooth)
    depth_ = None if depth is None or depth == "" else as_int("depth", depth, 1, t.depth)
    switch = None if switch_scale is None or switch_scale == "" else as_int("switch scale", switch_scale, 1,
                                                                              t.num_scales)
    if depth_ == t.depth:
        depth_, switch = None, None
    elif depth_ is None:
        switch = None
    mib = as_float("memory budget (MiB)", 0 if memory_budget_mib is None else memory_budget_mib, 0.0,
                   limits.max_memory_budget_mib)
    if mib > 0 and depth_ is not None:
        raise InputError("the memory budget chooses the depth plan itself: set depth to full or the budget to 0")
    if not isinstance(search, (str, type(None))) or (search or "off") not in SEARCH_MODES:
        raise InputError(f"search must be one of {', '.join(SEARCH_MODES)}, got {_show(search)}")
    search_ = None if search in (None, "off") else search
    budget_ = as_float("search budget", budget, 1.0, limits.max_budget) if search_ else None
    return GenerateRequest(label=label, num_images=num, seed=seed_, cfg=cfg_, top_k=top_k_, top_p=top_p_,
                           more_smooth=smooth, depth=depth_, switch_scale=switch,
                           memory_budget_bytes=int(mib * 2**20) if mib > 0 else None, search=search_,
                           budget=budget_)


@dataclass(frozen=True)
class EditRequest:
    """A checked edit request: the arguments of one Pipeline.edit call."""

    image: np.ndarray  # (H, W, 3) in [0, 1]
    mask: np.ndarray  # (H, W), 1 = regenerate (the out-painting border when outpaint > 0)
    label: int | None  # None: in-paint without a class
    num_images: int
    seed: int
    cfg: float
    outpaint: int  # border in model pixels (0: the drawn mask)


def parse_edit_request(pipe: Pipeline, limits: Limits, editor: Any, class_: Any, num_images: Any = 1, seed: Any = 0,
                       cfg: Any = 1.5, outpaint: Any = 0, randomize_seed: Any = False) -> EditRequest:
    """Check an edit request: the image editor's value (background + painted layers = the mask), the class
    (NO_CLASS or None: none), and the settings. outpaint > 0 ignores the painting and regenerates a border
    of that many model pixels around the image. Raises InputError."""
    if isinstance(editor, dict):  # sizes first: nothing over the limit is converted
        for part in (editor.get("background"), *(editor.get("layers") or [])):
            shape = np.shape(part) if not hasattr(part, "size") or isinstance(part, np.ndarray) else part.size[::-1]
            if part is not None and len(shape) >= 2 and shape[0] * shape[1] > limits.max_upload_pixels:
                raise InputError(f"the image is {shape[1]}x{shape[0]}: over the server's "
                                 f"{limits.max_upload_pixels:,}-pixel limit")
    image, mask = mask_from_editor(editor)
    if isinstance(class_, (list, tuple)) and len(class_) == 1:
        class_ = class_[0]
    if isinstance(class_, str) and len(class_) > MAX_TEXT:
        raise InputError(f"class name is too long ({len(class_)} characters)")
    label = None if class_ in (None, "", NO_CLASS) else pipe.class_id(class_)
    if label is not None and label in (-1, pipe.config.num_classes):  # the null class: in-painting
        label = None
    num = as_int("number of images", num_images, 1, limits.max_images)
    seed_ = as_seed(seed, randomize_seed)
    cfg_ = as_float("cfg", cfg, 0.0, limits.max_cfg)
    size = pipe.config.image_size
    border = as_int("out-paint border", 0 if outpaint is None else outpaint, 0, max(0, size // 2 - 1))
    if border == 0 and not mask.any():
        raise InputError("paint over the part of the image to regenerate (or set an out-paint border)")
    return EditRequest(image=image, mask=mask, label=label, num_images=num, seed=seed_, cfg=cfg_, outpaint=border)


def upload_paths(files: Any, what: str, most: int) -> list[str]:
    """Paths of uploaded files (Gradio hands paths or objects with .name); InputError for none or too many."""
    if files is None or files == []:
        raise InputError(f"upload {what} first")
    items = files if isinstance(files, (list, tuple)) else [files]
    if len(items) > most:
        raise InputError(f"{len(items)} files: at most {most} {what} per request")
    paths = []
    for item in items:
        path = item if isinstance(item, str) else getattr(item, "name", None) or getattr(item, "path", None)
        if not isinstance(path, str):
            raise InputError(f"not an uploaded file: {_show(item)}")
        paths.append(path)
    return paths


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."
