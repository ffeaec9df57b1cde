"""Quality of a var-engine model on the default data: tokenizer PSNR / codebook usage, and for
generated images the evaluator's class accuracy and FID-style distance to held-out digits, next
to the real-vs-real floor. Usage: python -m bench.quality [--checkpoint DIR] [--per-class 100]
"""
from __future__ import annotations

import argparse
import time

import torch

from bench.common import markdown_table, parse_args, write_results
from var_engine import Pipeline
from var_engine.config import SamplingConfig
from var_engine.data import DigitsDataset
from var_engine.evaluator import FeatureExtractor, accuracy
from var_engine.images import save_grid
from var_engine.metrics import batches, frechet_distance
from var_engine.train_tokenizer import evaluate_tokenizer
from var_engine.train_transformer import evaluate_tokens


def generate_set(pipe: Pipeline, per_class: int, cfg: float, seed: int, plan=None, batch: int = 200,
                 draw: str = "release", top_k: int = SamplingConfig.top_k,
                 top_p: float = SamplingConfig.top_p):
    """per_class images of every class; image i of class c has a fixed seed stream per batch."""
    labels = torch.arange(pipe.config.num_classes).repeat_interleave(per_class)
    images = []
    for i in range(0, len(labels), batch):
        out = pipe.generate(labels[i:i + batch], seed=seed + i, cfg=cfg, layer_plan=plan, draw=draw,
                            top_k=top_k, top_p=top_p)
        images.append(out.images.cpu())
    return torch.cat(images), labels


class HeldoutScore:
    """Class accuracy (shipped evaluator) and FID-style distance to the held-out digits of generated sets."""

    def __init__(self, evaluator) -> None:
        self.evaluator = evaluator
        self.features = FeatureExtractor(evaluator)
        self.held01 = DigitsDataset("heldout").tensors()[0].add(1).mul(0.5)

    def of_generated(self, pipe: Pipeline, per_class: int, plan=None, draw: str = "release") -> tuple[float, float]:
        """(accuracy, FID-style) of per_class images of every class at cfg 1.5, seed 1000."""
        images, labels = generate_set(pipe, per_class, 1.5, 1000, plan, draw=draw)
        return (accuracy(self.evaluator, images, labels),
                frechet_distance(self.features, batches(self.held01), batches(images)))


def load_image_set(path: str) -> torch.Tensor:
    """An .npz (arr_0: N,H,W,3 uint8, the layout FID toolkits use) or a folder of images -> (N, 3, H, W) in [0, 1]."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    p = Path(path)
    if p.suffix == ".npz":
        arr = np.load(p)["arr_0"]
    else:
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
        if not files:
            raise SystemExit(f"no images found under {p}")
        arr = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--cfgs", default="1.0,1.5,2.0,3.0")
    p.add_argument("--depths", default="", help="also measure these subnet depths (e.g. 4,2)")
    p.add_argument("--switch-scale", type=int, default=None, help="default: the checkpoint's own")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--top-k", type=int, default=SamplingConfig.top_k, help="sampling top-k (0: off)")
    p.add_argument("--top-p", type=float, default=SamplingConfig.top_p, help="sampling top-p (0: off)")
    p.add_argument("--grid", default=None, help="write a 10 x 8 sample grid PNG here")
    p.add_argument("--out-name", default="quality")
    p.add_argument("--reference", default=None,
                   help="reference set for the distances: .npz (arr_0) or image folder (default: held-out digits)")
    p.add_argument("--inception", action="store_true",
                   help="also report standard Inception FID (needs torch-fidelity and its weights)")
    args = parse_args(p, argv)
    pipe = Pipeline.from_pretrained(args.checkpoint)
    evaluator = pipe.components.get("evaluator")
    if evaluator is None:
        raise SystemExit("this checkpoint ships no evaluator (train one with var-engine train-evaluator)")
    feats = FeatureExtractor(evaluator)
    held_x, held_y = DigitsDataset("heldout").tensors()
    train_x, _ = DigitsDataset("train").tensors()
    held01, train01 = held_x.add(1).mul(0.5), train_x.add(1).mul(0.5)
    reference = load_image_set(args.reference) if args.reference else held01

    tok = evaluate_tokenizer(pipe.tokenizer, held_x)
    held_tokens = pipe.tokenizer.encode(held_x)
    floor = frechet_distance(feats, batches(held01), batches(train01))
    rows = [{"set": "real held-out vs train (floor)", "cfg": "", "depth": "",
             "accuracy": accuracy(evaluator, held01, held_y), "fid_evaluator": floor, "heldout_nll": "",
             "s_per_image": ""}]
    D = pipe.config.depth
    depths = [D] + [int(d) for d in args.depths.split(",") if d]
    cfgs = [float(c) for c in args.cfgs.split(",") if c]
    for depth in depths:
        plan = None if depth == D else pipe.depth_plan(depth, args.switch_scale)
        nll = evaluate_tokens(pipe.transformer, pipe.tokenizer, held_tokens, held_y,
                              block_tokens=plan.block_tokens() if plan else None)["heldout_loss"]
        for cfg in cfgs:
            t0 = time.perf_counter()
            images, labels = generate_set(pipe, args.per_class, cfg, args.seed, plan, top_k=args.top_k,
                                          top_p=args.top_p)
            dt = (time.perf_counter() - t0) / len(images)
            rows.append({"set": "generated", "cfg": cfg, "depth": depth if plan else f"{D} (full)",
                         "accuracy": accuracy(evaluator, images, labels),
                         "fid_evaluator": frechet_distance(feats, batches(reference), batches(images)),
                         "heldout_nll": nll, "s_per_image": dt})
            if args.inception:  # raises a ConfigError naming what is missing when unavailable
                rows[-1]["fid_inception"] = frechet_distance(2048, batches(reference), batches(images))
            print(rows[-1], flush=True)
    if args.grid:
        images, _ = generate_set(pipe, 8, 1.5, 0)
        save_grid(images, args.grid, nrow=8)
    table = (f"Tokenizer: held-out PSNR {tok['psnr']:.2f} dB, codebook usage {tok['codebook_usage']:.1f}% "
             f"of {pipe.config.tokenizer.vocab_size} codes\n\n"
             f"Generated: {args.per_class} per class, top-k {args.top_k}, top-p {args.top_p}; FID-style distance "
             "from the shipped evaluator's features "
             f"against {args.reference or f'{len(held01)} held-out digits'} (not comparable to Inception FID). "
             "heldout_nll: teacher-forced cross-entropy (nats/token) of the held-out digits' tokens under the "
             "depth plan (low-noise, independent of sampling).\n\n"
             + markdown_table(rows, ["set", "depth", "cfg", "accuracy", "fid_evaluator", "heldout_nll",
                                  "s_per_image"]
                            + (["fid_inception"] if args.inception else [])))
    write_results(args.out_name, {"checkpoint": pipe.meta.get("path"), "tokenizer": tok, "rows": rows,
                                  "per_class": args.per_class, "top_k": args.top_k, "top_p": args.top_p,
                                  "switch_scale": args.switch_scale or pipe.default_switch_scale()},
                  table)


if __name__ == "__main__":
    main()
