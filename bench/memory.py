"""Memory: KV-cache bytes per image (measured and analytic) and peak memory of a generate call,
versus batch size and depth plan. Writes bench/results/memory.{json,md} and memory.png.

Peak memory (`bench.peak`): each call measured in its own process, as the growth of CUDA's peak
allocation or, on Linux CPUs, of the process's peak resident set during the call.
Usage: python -m bench.memory [--model default] [--batches 1,4,16,64] [--threads 2]
"""
from __future__ import annotations

import argparse

import torch

from bench.common import markdown_table, parse_args, results_dir, write_results
from bench.peak import CallSpec, peak_call_bytes
from bench.plot import line_chart
from bench.sampler import build


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--batches", default="1,4,16,64")
    p.add_argument("--depths", default="", help="subnet depths to add (default: D/2 and 2)")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--no-peak", action="store_true", help="skip the peak-memory measurements (a process each)")
    args = parse_args(p, argv)
    pipe = build(args.model)
    D = pipe.config.depth
    depths = [int(d) for d in args.depths.split(",") if d] or sorted({D // 2, 2} - {D}, reverse=True)
    switch = pipe.default_switch_scale()
    plans = ([("full", None, False), ("full, transient last scale", None, True)]
             + [(f"d{d} switch {switch}", d, False) for d in depths])
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        labels = torch.arange(batch) % pipe.config.num_classes
        for name, depth, transient in plans:
            plan = None if depth is None else pipe.depth_plan(depth, switch)
            out = pipe.generate(labels, seed=0, cfg=args.cfg, layer_plan=plan, transient_last_scale=transient)
            peak = None if args.no_peak else peak_call_bytes(CallSpec(
                args.model, batch, depth, None if depth is None else switch, args.cfg, transient,
                device=str(pipe.device), threads=torch.get_num_threads()))
            analytic = batch * pipe.kv_bytes_per_image(args.cfg, plan, transient)
            rows.append({"model": args.model, "plan": name, "batch": batch, "kv_bytes": out.stats.kv_bytes,
                         "kv_analytic_bytes": analytic, "kv_vs_analytic": out.stats.kv_bytes / analytic,
                         "kv_bytes_per_image": out.stats.kv_bytes // batch, "peak_bytes": peak})
            print(rows[-1], flush=True)
    series = {name: [(r["batch"], r["kv_bytes"] / 2**20) for r in rows if r["plan"] == name] for name, _, _ in plans}
    line_chart(results_dir() / "memory.png", f"{args.model}: KV cache vs batch (cfg {args.cfg})", "batch", "MiB",
               series)
    write_results("memory", {"rows": rows, "cfg": args.cfg},
                  f"Memory of generate ({args.model}, cfg {args.cfg}); peak_bytes: "
                  + ("growth of CUDA's peak allocation" if pipe.device.type == "cuda" else
                     "growth of the peak resident set")
                  + " during the call, each call in a fresh process after a batch-1 warm-up (bench.peak)"
                  + "\n\n" + markdown_table(rows, list(rows[0].keys())))


if __name__ == "__main__":
    main()
