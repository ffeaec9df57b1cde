"""Speed: s/image and tokens/s versus batch size, split into transformer and decode time.
Writes bench/results/speed.{json,md} and speed.png.
Usage: python -m bench.speed [--model default] [--batches 1,4,16,64] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from bench.common import markdown_table, parse_args, results_dir, write_results
from bench.plot import line_chart
from bench.sampler import build


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--batches", default="1,4,16,64")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cfg", type=float, default=1.5)
    args = parse_args(p, argv)
    pipe = build(args.model)
    L = pipe.config.transformer.num_tokens
    pipe.generate([0], seed=0)  # warm-up
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        labels = torch.arange(batch) % pipe.config.num_classes
        runs = []
        for r in range(args.repeats):
            s = pipe.generate(labels, seed=r, cfg=args.cfg).stats
            runs.append((s.seconds, s.transformer_seconds, s.decode_seconds))
        total, transformer, decode = (statistics.median(x) for x in zip(*runs))
        rows.append({"model": args.model, "batch": batch, "s_per_image": total / batch,
                     "tokens_per_s": batch * L / transformer, "transformer_s": transformer, "decode_s": decode,
                     "decode_share": decode / total})
        print(rows[-1], flush=True)
    line_chart(results_dir() / "speed.png", f"{args.model}: seconds per image vs batch (cfg {args.cfg})", "batch",
               "s/image", {"s/image": [(r["batch"], r["s_per_image"]) for r in rows]})
    write_results("speed", {"rows": rows, "cfg": args.cfg, "repeats": args.repeats},
                  f"Speed of generate ({args.model}, cfg {args.cfg}, median of {args.repeats})\n\n"
                  + markdown_table(rows, list(rows[0].keys())))


if __name__ == "__main__":
    main()
