"""Side by side with the official VAR code: the same random-initialised official-layout model
(var-engine's weights copied into the official modules by state dict, names unchanged), the same
labels and seeds. Checks that both produce the same images (same tokens), then reports the
end-to-end speed ratio, the KV-cache memory ratio, and the decoders side by side: the official
`fhat_to_img` and var-engine's `fhat_to_images` on the same latents, timed interleaved. Every row
also carries the physical floor of the call (`bench.sampler.floor_seconds`, from peaks measured at
the start and at the end of the run, the better of each) and each implementation's time over it;
on CPU, the rate of var-engine's transformer matmuls (their FLOPs over the profiler's time for them
in one token-generation call) against the measured matmul peak.

The official code is not part of var-engine: pass the path of your own checkout
(git clone https://github.com/FoundationVision/VAR); it is imported from there, never copied.

Usage: python -m bench.official --official-dir ../VAR [--model d16] [--batches 1,8] [--threads 2]
       GPU: add --device cuda --precision bf16 --runner cuda-graphs
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.common import markdown_table, parse_args, sync, write_results
from bench.floor import DevicePeaks, measure_peaks, transformer_matmul_flops
from bench.sampler import build, floor_seconds, image_decoder_flops
from var_engine.pipeline import PRECISIONS
from var_engine.sampling import RUNNERS


def load_official(official_dir: Path, pipe, fast_kernels: bool = False):
    """Build the official VQVAE + VAR with var-engine's config and load var-engine's state dicts.

    fast_kernels: let the official code use flash-attn / xformers / fused ops where installed (its own
    defaults, for GPU timing); off, it runs its plain PyTorch path (CPU parity).
    """
    if not (official_dir / "models" / "var.py").is_file():
        raise SystemExit(f"{official_dir} does not look like a FoundationVision/VAR checkout (models/var.py missing)")
    sys.path.insert(0, str(official_dir))
    try:
        vqvae_mod = importlib.import_module("models.vqvae")
        var_mod = importlib.import_module("models.var")
    except ImportError as e:
        raise SystemExit(f"cannot import the official code from {official_dir}: {e} "
                         "(it needs huggingface_hub: pip install huggingface_hub)") from e
    t, v = pipe.config.tokenizer, pipe.config.transformer
    vae = vqvae_mod.VQVAE(vocab_size=t.vocab_size, z_channels=t.z_channels, ch=t.ch, test_mode=True,
                          share_quant_resi=t.share_quant_resi, v_patch_nums=t.patch_nums)
    var = var_mod.VAR(vae_local=vae, num_classes=v.num_classes, depth=v.depth, embed_dim=v.embed_dim,
                      num_heads=v.num_heads, norm_eps=v.norm_eps, shared_aln=v.shared_aln, cond_drop_rate=0.0,
                      attn_l2_norm=v.attn_l2_norm, patch_nums=v.patch_nums,
                      flash_if_available=fast_kernels, fused_if_available=fast_kernels)
    vae.load_state_dict({k: x.contiguous() for k, x in pipe.tokenizer.state_dict().items()})
    var.load_state_dict(pipe.transformer.state_dict())
    return vae.eval(), var.eval()


def time_decoders(vae, pipe, f_hat: torch.Tensor, repeats: int, precision: str) -> tuple[float, float, float]:
    """Median seconds of the official decoder and of var-engine's on the same f_hat (interleaved runs,
    after one warm-up each), and the largest difference between their images."""
    device = f_hat.device
    official, ours = [], []
    with torch.no_grad(), pipe.autocast(precision):
        for r in range(repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            theirs = vae.fhat_to_img(f_hat)
            sync(device)
            t1 = time.perf_counter()
            mine = pipe.tokenizer.fhat_to_images(f_hat)
            sync(device)
            if r:
                official.append(t1 - t0)
                ours.append(time.perf_counter() - t1)
    return statistics.median(official), statistics.median(ours), (theirs.float() - mine.float()).abs().max().item()


# the ops that run the transformer's weight matmuls on CPU (BLAS through addmm/mm, oneDNN's linear)
MATMUL_OPS = ("aten::addmm", "aten::mm", "mkldnn::_linear_pointwise")


def matmul_seconds(fn) -> float:
    """Profiler self time of the weight-matmul ops in one call of `fn` (CPU)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1e6


def with_floor(row: dict, pipe, peaks: DevicePeaks, cfg: float, decode_flops: int) -> dict:
    """The row with the call's physical floor (`bench.sampler.floor_seconds`) and both implementations'
    time over it after the speed-up; the floor's parts and the matmul rate over the peak at the end."""
    batch = row["batch"]
    floor = floor_seconds(pipe, batch, peaks, cfg, row["precision"], decode_flops)
    per_image = floor["floor_s_per_image"]
    head = list(row)[:list(row).index("speedup") + 1]
    out = {k: row[k] for k in head}
    out.update({"floor_s_per_image": per_image, "var_engine_x_floor": row["var_engine_s_per_image"] / per_image,
                "official_x_floor": row["official_s_per_image"] / per_image})
    out.update({k: v for k, v in row.items() if k not in out})
    out.update({"floor_transformer_s_per_image": floor["floor_transformer_s"] / batch,
                "floor_decode_s_per_image": floor["floor_decode_s"] / batch})
    if "matmul_flops_per_s" in row:
        out["matmul_vs_peak"] = row["matmul_flops_per_s"] / peaks.matmul
    return out


class OfficialKVMeter:
    """Peak bytes held in the official model's KV caches, read from its attention modules after each
    forward (their dtype is whatever the official code stores under the chosen autocast)."""

    def __init__(self, var) -> None:
        self.held: dict[int, int] = {}
        self.peak = 0
        for block in var.blocks:
            block.attn.register_forward_hook(self._after_forward)

    def _after_forward(self, module, args, output) -> None:
        tensors = (getattr(module, "cached_k", None), getattr(module, "cached_v", None))
        self.held[id(module)] = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        self.peak = max(self.peak, sum(self.held.values()))

    def reset(self) -> None:
        self.held.clear()
        self.peak = 0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--official-dir", required=True, type=Path)
    p.add_argument("--model", default="d16")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="autocast for both implementations (the official demo samples under autocast)")
    p.add_argument("--runner", default="eager", choices=RUNNERS)
    p.add_argument("--out-name", default=None, help="results file name (default: official_<model>[_<device>_...])")
    args = parse_args(p, argv)
    device = torch.device(args.device)
    peak_dtype = torch.float32 if args.precision == "fp32" else PRECISIONS[args.precision]
    first_peaks = measure_peaks(device, peak_dtype)
    pipe = build(args.model, device).with_runner(args.runner)
    decode_flops = image_decoder_flops(pipe)
    vae, var = load_official(args.official_dir, pipe, fast_kernels=device.type == "cuda")
    vae.to(device)  # the official VAR holds its VQVAE outside its registered modules
    var.to(device)
    var.rng = torch.Generator(device)  # the official model seeds its own generator per call
    meter = OfficialKVMeter(var)
    pipe.generate([0], seed=0, cfg=args.cfg, precision=args.precision)  # warm-up (and capture/compile)
    with torch.no_grad(), pipe.autocast(args.precision):
        var.autoregressive_infer_cfg(1, torch.zeros(1, dtype=torch.long, device=device), g_seed=0, cfg=args.cfg)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        labels = (torch.arange(batch) % pipe.config.num_classes).to(device)
        ours, ours_transformer, theirs, kv_ours, kv_theirs = [], [], [], 0, 0
        if args.runner != "eager":  # capture / compile for this batch size outside the timing
            pipe.generate(labels, seed=0, cfg=args.cfg, precision=args.precision)
        for r in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            out = pipe.generate(labels, seed=100 + r, cfg=args.cfg, top_k=900, top_p=0.96, precision=args.precision)
            sync(device)
            ours.append(time.perf_counter() - t0)
            ours_transformer.append(out.stats.transformer_seconds)
            kv_ours = out.stats.kv_bytes
            meter.reset()
            t0 = time.perf_counter()
            with torch.no_grad(), pipe.autocast(args.precision):
                images = var.autoregressive_infer_cfg(batch, labels, g_seed=100 + r, cfg=args.cfg, top_k=900, top_p=0.96)
            sync(device)
            theirs.append(time.perf_counter() - t0)
            kv_theirs = meter.peak
            diff = (images.float() - out.images).abs().max().item()
        f_hat = pipe.tokenizer.tokens_to_fhat(out.tokens)
        dec_theirs, dec_ours, dec_diff = time_decoders(vae, pipe, f_hat, args.repeats, args.precision)
        s_ours, s_theirs = statistics.median(ours) / batch, statistics.median(theirs) / batch
        matmul = {}
        if device.type == "cpu":  # profiler CPU time is kernel time only on CPU
            mm_s = matmul_seconds(lambda: pipe.generate(labels, seed=100, cfg=args.cfg, top_k=900, top_p=0.96,
                                                        precision=args.precision, decode=False))
            rate = transformer_matmul_flops(pipe.config.transformer, batch, guided=args.cfg != 0) / mm_s
            matmul = {"var_engine_matmul_s_per_image": mm_s / batch, "matmul_flops_per_s": rate}
        # the official caches are grown by torch.cat and cleared when sampling ends; the meter sees
        # them at their largest, after the last scale (not the transient copy made by each cat)
        rows.append({"model": args.model, "device": str(device), "precision": args.precision, "runner": args.runner,
                     "batch": batch, "official_s_per_image": s_theirs, "var_engine_s_per_image": s_ours,
                     "speedup": statistics.median(theirs) / statistics.median(ours),
                     "kv_bytes_official": kv_theirs, "kv_bytes_var_engine": kv_ours,
                     "memory_ratio": kv_theirs / kv_ours, "max_image_diff": diff, "same_images": diff < 1e-3,
                     "official_decode_s_per_image": dec_theirs / batch, "var_engine_decode_s_per_image": dec_ours / batch,
                     "decode_speedup": dec_theirs / dec_ours, "decode_max_diff": dec_diff,
                     "var_engine_transformer_s_per_image": statistics.median(ours_transformer) / batch, **matmul})
        print(rows[-1], flush=True)
    # peaks measured before and after the timed runs, the better of each: on a shared machine a
    # busy moment lowers a measured peak (and raises the floor), never the other way round
    last_peaks = measure_peaks(device, peak_dtype)
    peaks = DevicePeaks(max(first_peaks.bandwidth, last_peaks.bandwidth), max(first_peaks.matmul, last_peaks.matmul))
    print(f"device peaks: {peaks.bandwidth / 1e9:.1f} GB/s copy, {peaks.matmul / 1e12:.3f} TFLOP/s matmul", flush=True)
    rows = [with_floor(row, pipe, peaks, args.cfg, decode_flops) for row in rows]
    suffix = "" if device.type == "cpu" else f"_{device.type}_{args.precision}_{args.runner}"
    write_results(args.out_name or f"official_{args.model}{suffix}",
                  {"rows": rows, "official_dir": str(args.official_dir), "repeats": args.repeats,
                   "peaks": {"copy_bytes_per_s": peaks.bandwidth, "matmul_flops": peaks.matmul},
                   # bytes of the decoder's cached Winograd kernels (CPU) after the decodes above
                   "var_engine_conv_cache_bytes": pipe.tokenizer.conv_cache_bytes()},
                  f"var-engine vs the official VAR code ({args.model}, {device.type}, {args.precision}, runner "
                  f"{args.runner}, random weights, cfg {args.cfg}, top-k 900, "
                  f"top-p 0.96, median of {args.repeats}). Floor: per scale max(weights + KV bytes / "
                  f"{peaks.bandwidth / 1e9:.0f} GB/s, FLOPs / {peaks.matmul / 1e12:.3f} TFLOP/s) plus the decoder's "
                  f"FLOPs at that rate, measured peaks; x_floor = s/image over the floor.\n\n"
                  + markdown_table(rows, list(rows[0].keys())))


if __name__ == "__main__":
    main()
