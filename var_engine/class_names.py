"""Class names: a checkpoint's own (config.json "class_names"), ImageNet's for official 1,000-class models,
else the ids as text; and resolving a class given by id or by name."""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Sequence

from .errors import InputError

IMAGENET_FILE = "imagenet_classes.txt"  # one line per class in index order: "tench, Tinca tinca"
NULL_NAMES = ("null", "none", "uncond")


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names in class-index order (WordNet lemmas, synonyms comma-separated)."""
    text = resources.files("var_engine").joinpath(IMAGENET_FILE).read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == 1000, f"{IMAGENET_FILE} holds {len(names)} names"
    return names


def class_names_for(num_classes: int, meta: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Names of a model's classes: meta["class_names"] when it has one per class, the ImageNet names for
    an official model of 1,000 classes, else "0", "1", ..."""
    meta = meta or {}
    stored = meta.get("class_names")
    if isinstance(stored, (list, tuple)) and len(stored) == num_classes and all(isinstance(n, str) for n in stored):
        return tuple(stored)
    if num_classes == 1000 and meta.get("source") == "official":
        return imagenet_class_names()
    return tuple(str(i) for i in range(num_classes))


def short_name(name: str) -> str:
    """The first synonym of a name ("tench, Tinca tinca" -> "tench")."""
    return name.split(",")[0].strip()


def class_label(index: int, names: Sequence[str]) -> str:
    """How a class is shown and picked: "207: golden retriever", or just the name when it is the id."""
    short = short_name(names[index])
    return short if short == str(index) else f"{index}: {short}"


def resolve_class(value: Any, names: Sequence[str]) -> int:
    """A class given as an id (int or digits), -1/'null' (unconditional, returned as -1), an exact name, any
    comma-separated synonym of one (case-insensitive), or a label "id: name" -> its id (names shared by two
    classes, such as ImageNet's two "crane"s, give the first; the label form picks either).
    Raises InputError otherwise."""
    n = len(names)
    if isinstance(value, bool):
        raise InputError(f"class {value!r} is neither an id nor a name")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        if value == -1 or 0 <= value < n:
            return value
        raise InputError(f"class id {value} is out of range: this model has classes 0..{n - 1} (-1: unconditional)")
    if not isinstance(value, str):
        raise InputError(f"class {value!r} is neither an id nor a name")
    text = " ".join(value.split()).lower()
    if not text:
        raise InputError("the class is empty: give an id or a name")
    if text in NULL_NAMES:
        return -1
    index = _name_index(tuple(names))
    if text in index:
        return index[text]
    labelled = re.fullmatch(r"(\d{1,9})\s*:\s*(.+)", text)
    if labelled and int(labelled.group(1)) < n:
        i = int(labelled.group(1))
        if labelled.group(2) in {" ".join(s.split()).lower() for s in names[i].split(",")}:
            return i
    if text.lstrip("-").isdigit() and len(text) <= 9:
        return resolve_class(int(text), names)
    shown = value if len(value) <= 40 else value[:40] + "..."
    raise InputError(f"unknown class {shown!r}: not an integer in 0..{n - 1} nor a class name of this model")


@lru_cache(maxsize=8)
def _name_index(names: tuple[str, ...]) -> dict[str, int]:
    """Lower-cased full names and each synonym -> id; a synonym shared by two classes maps to the first."""
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        index.setdefault(" ".join(name.split()).lower(), i)
    for i, name in enumerate(names):
        for synonym in name.split(","):
            index.setdefault(" ".join(synonym.split()).lower(), i)
    return index
