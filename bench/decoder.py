"""VQVAE decode speed under each decoder setting: memory format, sub-pixel upsampling, the 3x3 convolutions'
algorithm (Winograd or direct), precision and (on CUDA) cuDNN autotuning and the group norms' channels-last
path, against the decoder's FLOP floor; optionally the profiler's top ops.
Prints a table, writes bench/results/<out-name>.{json,md}.

Usage: python -m bench.decoder [--models default,d16] [--batches 1,4] [--precisions fp32]
       GPU: python -m bench.decoder --device cuda --models d16 --batches 1,64 --precisions fp32,bf16 --profile
"""
from __future__ import annotations

import argparse
import itertools
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from bench.common import markdown_table, parse_args, profile_tables, profile_top_ops, sync, write_results
from bench.floor import measure_peaks
from bench.sampler import build, image_decoder_flops
from var_engine.pipeline import PRECISIONS, Pipeline
from var_engine.tokenizer.vqvae import Upsample2x


@dataclass(frozen=True)
class DecoderSetting:
    precision: str
    channels_last: bool
    subpixel: bool
    cudnn_benchmark: bool
    group_norm: str = "auto"  # see var_engine.tokenizer.vqvae.GROUP_NORM_LAYOUTS
    conv: str = "auto"  # see var_engine.tokenizer.winograd.CONV_ALGORITHMS

    def apply(self, pipe: Pipeline) -> None:
        tokenizer = pipe.tokenizer.set_channels_last(self.channels_last)
        tokenizer.set_group_norm_layout(self.group_norm).set_conv_algorithm(self.conv)
        for m in pipe.tokenizer.decoder.modules():
            if isinstance(m, Upsample2x):
                m.subpixel = self.subpixel
        torch.backends.cudnn.benchmark = self.cudnn_benchmark


def settings_for(device: torch.device, precisions: list[str]) -> list[DecoderSetting]:
    """The engine's default first (channels-last, sub-pixel, no autotuning, group norm and conv 'auto'), then
    every other combination; on CUDA channels-last settings also run with group norm 'native' and 'keep',
    on CPU every setting also with direct convolutions."""
    cuda = device.type == "cuda"
    tune = (False, True) if cuda else (False,)
    convs = ("auto",) if cuda else ("auto", "direct")
    combos = [DecoderSetting(p, cl, sp, cb, gn, conv) for p in precisions
              for cl, sp, cb, conv in itertools.product((True, False), (True, False), tune, convs)
              for gn in (("auto", "native", "keep") if cuda and cl else ("auto",))]
    return sorted(combos, key=lambda s: (s.precision != precisions[0], not s.channels_last, not s.subpixel,
                                         s.conv != "auto", s.cudnn_benchmark, s.group_norm != "auto"))


def time_decodes(pipe: Pipeline, f_hat: torch.Tensor, settings: list[DecoderSetting], repeats: int) -> list[float]:
    """Median seconds of one decode of f_hat per setting, over `repeats` rounds that time each setting
    once, interleaved. Each timed decode follows an untimed one under the same setting: switching
    settings converts weights and drops cached kernels, and autotuning happens on first use."""
    times: list[list[float]] = [[] for _ in settings]
    with torch.no_grad():
        for _ in range(repeats):
            for setting, seconds in zip(settings, times):
                setting.apply(pipe)
                with pipe.autocast(setting.precision):
                    pipe.tokenizer.fhat_to_images(f_hat)
                    sync(pipe.device)
                    t0 = time.perf_counter()
                    pipe.tokenizer.fhat_to_images(f_hat)
                    sync(pipe.device)
                seconds.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="default,d16")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--precisions", default="fp32", help=f"comma list from {','.join(PRECISIONS)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--profile", action="store_true", help="add the top ops of the default setting per shape")
    p.add_argument("--out-name", default="decoder")
    args = parse_args(p, argv)
    device = torch.device(args.device)
    precisions = args.precisions.split(",")
    if unknown := [x for x in precisions if x not in PRECISIONS]:
        raise SystemExit(f"unknown precision {unknown[0]!r}; choose from {', '.join(PRECISIONS)}")
    peaks = {x: measure_peaks(device, torch.float32 if x == "fp32" else PRECISIONS[x]).matmul for x in precisions}
    rows, profiles = [], {}
    settings = settings_for(device, precisions)  # the engine's default first
    benchmark_before = torch.backends.cudnn.benchmark
    try:
        for name in args.models.split(","):
            pipe = build(name, device)
            flops = image_decoder_flops(pipe)
            L = pipe.config.transformer.num_tokens
            for batch in (int(b) for b in args.batches.split(",")):
                g = torch.Generator().manual_seed(0)
                tokens = torch.randint(pipe.config.tokenizer.vocab_size, (batch, L), generator=g).to(device)
                f_hat = pipe.tokenizer.tokens_to_fhat(tokens)
                group = []
                for setting, seconds in zip(settings, time_decodes(pipe, f_hat, settings, args.repeats)):
                    floor = batch * flops / peaks[setting.precision]
                    group.append({"model": name, "batch": batch, **asdict(setting), "ms_per_image": 1e3 * seconds / batch,
                                  "x_floor": seconds / floor})
                for row in group:
                    row["speedup_vs_default"] = group[0]["ms_per_image"] / row["ms_per_image"]
                    print(row, flush=True)
                rows += group
                if args.profile:
                    default = settings[0]
                    default.apply(pipe)

                    def decode_once() -> None:
                        with torch.no_grad(), pipe.autocast(default.precision):
                            pipe.tokenizer.fhat_to_images(f_hat)

                    profiles[f"{name} batch {batch}"] = profile_top_ops(decode_once, device)
            settings[0].apply(pipe)
    finally:
        torch.backends.cudnn.benchmark = benchmark_before
    cols = ["model", "batch", "precision", "channels_last", "subpixel", "conv", "cudnn_benchmark", "group_norm",
            "ms_per_image", "speedup_vs_default", "x_floor"]
    table = (f"Decoder on {device.type} (median of {args.repeats} interleaved rounds, each decode timed after an "
             f"untimed one; floor: the FLOPs of the engine's default decode path (sub-pixel upsampling, on CPU "
             f"Winograd convolutions) over the measured matmul rate; first row of each shape is the engine's "
             f"default)\n\n" + markdown_table(rows, cols))
    table += profile_tables(profiles, "default setting")
    write_results(args.out_name, {"rows": rows, "profiles": profiles, "device": str(device),
                                  "peaks_matmul_flops": peaks}, table)


if __name__ == "__main__":
    main()
