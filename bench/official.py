"""Side by side with the official VAR code: the same random-initialised official-layout model
(var-engine's weights copied into the official modules by state dict, names unchanged), the same
labels and seeds. Checks that both produce the same images (same tokens), then reports the
end-to-end speed ratio, the KV-cache memory ratio, and the decoders side by side: the official
`fhat_to_img` and var-engine's `fhat_to_images` on the same latents, timed interleaved.

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
from bench.sampler import build
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
    pipe = build(args.model, device).with_runner(args.runner)
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
        ours, theirs, kv_ours, kv_theirs = [], [], 0, 0
        if args.runner != "eager":  # capture / compile for this batch size outside the timing
            pipe.generate(labels, seed=0, cfg=args.cfg, precision=args.precision)
        for r in range(args.repeats):
            sync(device)
            t0 = time.perf_counter()
            out = pipe.generate(labels, seed=100 + r, cfg=args.cfg, top_k=900, top_p=0.96, precision=args.precision)
            sync(device)
            ours.append(time.perf_counter() - t0)
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
        # the official caches are grown by torch.cat and cleared when sampling ends; the meter sees
        # them at their largest, after the last scale (not the transient copy made by each cat)
        rows.append({"model": args.model, "device": str(device), "precision": args.precision, "runner": args.runner,
                     "batch": batch, "official_s_per_image": statistics.median(theirs) / batch,
                     "var_engine_s_per_image": statistics.median(ours) / batch,
                     "speedup": statistics.median(theirs) / statistics.median(ours),
                     "kv_bytes_official": kv_theirs, "kv_bytes_var_engine": kv_ours,
                     "memory_ratio": kv_theirs / kv_ours, "max_image_diff": diff, "same_images": diff < 1e-3,
                     "official_decode_s_per_image": dec_theirs / batch, "var_engine_decode_s_per_image": dec_ours / batch,
                     "decode_speedup": dec_theirs / dec_ours, "decode_max_diff": dec_diff})
        print(rows[-1], flush=True)
    suffix = "" if device.type == "cpu" else f"_{device.type}_{args.precision}_{args.runner}"
    write_results(args.out_name or f"official_{args.model}{suffix}", {"rows": rows, "official_dir": str(args.official_dir)},
                  f"var-engine vs the official VAR code ({args.model}, {device.type}, {args.precision}, runner "
                  f"{args.runner}, random weights, cfg {args.cfg}, top-k 900, "
                  f"top-p 0.96, median of {args.repeats})\n\n"
                  + markdown_table(rows, list(rows[0].keys())))


if __name__ == "__main__":
    main()
