"""Batch generation at scale: deterministic per image, resumable after any kill, shardable.

Image i of class c always gets the same seed, and jobs are grouped into fixed chunks of
`batch_size`, so a run is bit-reproducible whatever was interrupted or how it is sharded
(torchrun: rank r takes chunks r, r + W, ...). Every PNG is written under a temporary name and
renamed, so a file that exists is complete; the PNGs themselves are the record of what is done,
and `manifest.json` pins the settings a folder was started with.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .errors import InputError
from .images import save_png
from .pipeline import Pipeline
from .sampling import LayerPlan
from .training import DistContext

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Job:
    class_id: int
    index: int  # image index within its class

    @property
    def filename(self) -> str:
        return f"class{self.class_id:04d}_{self.index:06d}.png"

    def seed(self, base_seed: int) -> int:
        """A stable 63-bit seed from (base seed, class, index)."""
        digest = hashlib.sha256(f"{base_seed}/{self.class_id}/{self.index}".encode()).digest()
        return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class BatchSettings:
    classes: list[int]
    per_class: int
    seed: int = 0
    batch_size: int = 16
    cfg: float = 1.5
    top_k: int = 900
    top_p: float = 0.96
    depth: int | None = None
    switch_scale: int | None = None
    finish_scale: int | None = None  # full depth again from this scale (see Pipeline.depth_plan)
    precision: str = "fp32"  # autocast precision; part of the manifest because it changes the images
    draw: str = "release"  # token draw method (see SamplingConfig.draw); changes the images too
    search: str | None = None  # test-time search per image ('tts', 'best_of_n'; see var_engine.search)
    budget: float | None = None  # the search's compute per image in plain full-depth samples


def plan_jobs(classes: Sequence[int], per_class: int) -> list[Job]:
    """All jobs, class-major: (c0, 0), (c0, 1), ..., (c1, 0), ..."""
    if per_class < 1:
        raise InputError(f"per_class must be >= 1, got {per_class}")
    return [Job(c, i) for c in classes for i in range(per_class)]


def _check_manifest(outdir: Path, record: dict[str, Any]) -> None:
    path = outdir / MANIFEST
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != record:
            diff = sorted(k for k in set(saved) | set(record) if saved.get(k) != record.get(k))
            raise InputError(f"{outdir} holds samples made with other settings (differs in {diff}); "
                             "use another --outdir or the same settings")
    else:
        tmp = outdir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)


def generate_folder(pipe: Pipeline, outdir: str | Path, settings: BatchSettings, *,
                    ctx: DistContext | None = None, progress: bool = True) -> dict[str, int]:
    """Generate every missing image of the set into `outdir`; returns counts (made, skipped)."""
    ctx = ctx or DistContext(str(pipe.device))
    outdir = Path(outdir)
    jobs = plan_jobs(pipe.parse_labels(settings.classes).tolist(), settings.per_class)
    plan: LayerPlan | None = pipe.depth_plan(settings.depth, settings.switch_scale, settings.finish_scale)
    if ctx.is_main:
        outdir.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in asdict(settings).items() if v is not None or k not in ("search", "budget", "finish_scale")}
        record = {"settings": fields, "model": pipe.config.to_dict(),
                  "checkpoint": pipe.meta.get("path", pipe.meta.get("source"))}
        _check_manifest(outdir, json.loads(json.dumps(record)))
        for stale in outdir.glob(".*.tmp"):  # half-written files of a killed run
            stale.unlink()
    ctx.barrier()
    chunks = [jobs[i:i + settings.batch_size] for i in range(0, len(jobs), settings.batch_size)]
    mine = chunks[ctx.rank::ctx.world_size]
    todo = [c for c in mine if not all((outdir / j.filename).is_file() for j in c)]
    made = 0
    from tqdm import tqdm

    with tqdm(total=sum(len(c) for c in mine), initial=sum(len(c) for c in mine) - sum(len(c) for c in todo),
              unit="img", desc=f"sample[{ctx.rank}]", disable=not progress) as bar:
        for chunk in todo:
            out = pipe.generate([j.class_id for j in chunk], seed=[j.seed(settings.seed) for j in chunk],
                                cfg=settings.cfg, top_k=settings.top_k, top_p=settings.top_p, layer_plan=plan,
                                precision=settings.precision, draw=settings.draw, search=settings.search,
                                budget=settings.budget)
            for job, image in zip(chunk, out.images.cpu()):
                if not (outdir / job.filename).is_file():
                    save_png(image, outdir / job.filename)
                    made += 1
            bar.update(len(chunk))
    ctx.barrier()
    return {"made": made, "total": len(jobs)}


def pack_npz(outdir: str | Path, settings: BatchSettings, npz_path: str | Path, num_classes: int) -> Path:
    """All PNGs of the set in job order -> `.npz` with `arr_0` (N, H, W, 3) uint8 and `labels` (N,)."""
    outdir, npz_path = Path(outdir), Path(npz_path)
    classes = [num_classes if c == -1 else c for c in settings.classes]
    jobs = plan_jobs(classes, settings.per_class)
    missing = [j.filename for j in jobs if not (outdir / j.filename).is_file()]
    if missing:
        raise InputError(f"{len(missing)} images are missing (e.g. {missing[0]}); finish the run first")
    arr = np.stack([np.asarray(Image.open(outdir / j.filename).convert("RGB")) for j in jobs])
    labels = np.array([j.class_id for j in jobs], dtype=np.int64)
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz_path.with_name(f".{npz_path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, arr_0=arr, labels=labels)
    os.replace(tmp, npz_path)
    return npz_path


__all__ = ["BatchSettings", "Job", "generate_folder", "pack_npz", "plan_jobs"]
