"""Memory: KV-cache bytes per image (measured and analytic) and peak process memory of a generate
call, versus batch size and depth plan. Writes bench/results/memory.{json,md} and memory.png.

Peak memory: CUDA max_memory_allocated on a GPU; on Linux CPUs the growth of the process's peak
resident set (VmHWM, reset before each call through /proc/self/clear_refs) over its size before.
Usage: python -m bench.memory [--model default] [--batches 1,4,16,64] [--threads 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.common import markdown_table, parse_args, results_dir, write_results
from bench.plot import line_chart
from bench.sampler import build

STATUS = Path("/proc/self/status")


def _rss_field(name: str) -> int | None:
    if not STATUS.is_file():
        return None
    for line in STATUS.read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    return None


def peak_extra_bytes(run) -> int | None:
    """Run `run()` and return how far the peak resident set rose above the size before it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _rss_field("VmRSS")
    run()
    peak = _rss_field("VmHWM")
    return None if before is None or peak is None else peak - before


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="default")
    p.add_argument("--batches", default="1,4,16,64")
    p.add_argument("--depths", default="", help="subnet depths to add (default: D/2 and 2)")
    p.add_argument("--cfg", type=float, default=1.5)
    args = parse_args(p, argv)
    pipe = build(args.model)
    D = pipe.config.depth
    depths = [int(d) for d in args.depths.split(",") if d] or sorted({D // 2, 2} - {D}, reverse=True)
    plans = ([("full", None, False), ("full, transient last scale", None, True)]
             + [(f"d{d} switch {pipe.default_switch_scale()}", pipe.depth_plan(d), False) for d in depths])
    cuda = pipe.device.type == "cuda"
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        labels = torch.arange(batch) % pipe.config.num_classes
        for name, plan, transient in plans:
            holder = {}

            def run():
                holder["out"] = pipe.generate(labels, seed=0, cfg=args.cfg, layer_plan=plan,
                                              transient_last_scale=transient)

            peak = None if cuda else peak_extra_bytes(run)
            if cuda or "out" not in holder:
                run()
            out = holder["out"]
            analytic = batch * pipe.kv_bytes_per_image(args.cfg, plan, transient)
            rows.append({"model": args.model, "plan": name, "batch": batch, "kv_bytes": out.stats.kv_bytes,
                         "kv_analytic_bytes": analytic, "kv_vs_analytic": out.stats.kv_bytes / analytic,
                         "kv_bytes_per_image": out.stats.kv_bytes // batch,
                         "peak_bytes": out.stats.peak_memory_bytes if cuda else peak})
            print(rows[-1], flush=True)
    series = {name: [(r["batch"], r["kv_bytes"] / 2**20) for r in rows if r["plan"] == name] for name, _, _ in plans}
    line_chart(results_dir() / "memory.png", f"{args.model}: KV cache vs batch (cfg {args.cfg})", "batch", "MiB",
               series)
    write_results("memory", {"rows": rows, "cfg": args.cfg},
                  f"Memory of generate ({args.model}, cfg {args.cfg}); peak_bytes: "
                  + ("CUDA peak allocated" if cuda else "growth of the process peak RSS during the call (0: the call fit "
                                                      "in memory the process already held from earlier calls)")
                  + "\n\n" + markdown_table(rows, list(rows[0].keys())))


if __name__ == "__main__":
    main()
