"""Every benchmark runs in a small smoke configuration and writes its JSON/markdown (and PNGs)."""
import json
import math
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@pytest.fixture
def results(tmp_path, monkeypatch):
    from var_engine import default_checkpoint_dir

    if not (default_checkpoint_dir() / "config.json").is_file():
        pytest.skip("embedded default model not present")
    monkeypatch.setenv("VAR_ENGINE_BENCH_RESULTS", str(tmp_path))
    return tmp_path


def rows(path):
    return json.loads(path.read_text())["rows"]


def all_finite(row, keys):
    """The row's measured numbers exist and are finite (no division by a zero time, no missing run)."""
    return all(isinstance(row[k], (int, float)) and math.isfinite(row[k]) for k in keys)


def test_sampler_smoke(results):
    from bench import sampler

    sampler.main(["--models", "default", "--batches", "2", "--repeats", "1", "--profile"])
    from bench.floor import DevicePeaks, transformer_floor_seconds
    from var_engine import Pipeline

    payload = json.loads((results / "sampler.json").read_text())
    r = payload["rows"]
    assert [(x["model"], x["batch"], x["impl"]) for x in r] == [
        ("default", 2, "var-engine eager"), ("default", 2, "cat-cache reference")]
    assert all(x["same_tokens_as_first"] for x in r) and all(x["kv_vs_analytic"] == 1 for x in r)
    # the floor is the analytic formula at the recorded peaks, the same for both rows; every derived column
    # is computed from the row's own times (no bound on a measured time: timing is the benchmark's job)
    pipe = Pipeline.from_pretrained()
    peaks = DevicePeaks(payload["peaks"]["copy_bytes_per_s"], payload["peaks"]["matmul_flops"])
    floor_transformer = transformer_floor_seconds(pipe.config.transformer, 2, peaks)
    floor_decode = 2 * sampler.image_decoder_flops(pipe) / peaks.matmul
    for x in r:
        assert all_finite(x, ["s_per_image", "transformer_s", "decode_s", "first_call_s", "x_floor", "tokens_per_s",
                              "speedup_vs_reference"])
        assert x["kv_analytic_bytes"] == 2 * pipe.kv_bytes_per_image(1.5)
        assert (x["floor_transformer_s"], x["floor_decode_s"]) == pytest.approx((floor_transformer, floor_decode))
        assert x["floor_s_per_image"] == pytest.approx((floor_transformer + floor_decode) / 2)
        assert x["s_per_image"] == pytest.approx((x["transformer_s"] + x["decode_s"]) / 2)
        assert x["x_floor"] == pytest.approx(x["s_per_image"] / x["floor_s_per_image"])
        assert x["tokens_per_s"] == pytest.approx(2 * pipe.config.transformer.num_tokens / x["transformer_s"])
        assert x["decode_share"] == pytest.approx(x["decode_s"] / (x["transformer_s"] + x["decode_s"]))
        assert x["speedup_vs_reference"] == pytest.approx(r[-1]["s_per_image"] / x["s_per_image"])
    ops = payload["profiles"]["default batch 2, var-engine eager"]
    assert any("addmm" in op["op"] or "linear" in op["op"] for op in ops)
    # the most expensive ops first, each op's share its self time over one common total
    assert [op["self_ms"] for op in ops] == sorted((op["self_ms"] for op in ops), reverse=True)
    assert all(op["share"] * ops[0]["self_ms"] == pytest.approx(ops[0]["share"] * op["self_ms"]) for op in ops)
    assert sum(op["share"] for op in ops) <= 1 + 1e-9


def test_decoder_smoke(results):
    from bench import decoder

    decoder.main(["--models", "default", "--batches", "2", "--repeats", "1", "--profile"])
    payload = json.loads((results / "decoder.json").read_text())
    r = payload["rows"]
    # CPU: memory format x sub-pixel upsampling x conv algorithm, the engine's default setting first
    assert [(x["channels_last"], x["subpixel"], x["conv"]) for x in r] == [
        (cl, sp, conv) for cl in (True, False) for sp in (True, False) for conv in ("auto", "direct")]
    # the floor is the default decode path's FLOPs (counted by PyTorch) at the recorded matmul rate
    from bench.sampler import image_decoder_flops
    from var_engine import Pipeline

    floor_ms = 1e3 * image_decoder_flops(Pipeline.from_pretrained()) / payload["peaks_matmul_flops"]["fp32"]
    assert all(all_finite(x, ["ms_per_image", "x_floor", "speedup_vs_default"]) for x in r)
    assert all(x["x_floor"] == pytest.approx(x["ms_per_image"] / floor_ms) for x in r)
    assert r[0]["speedup_vs_default"] == 1
    assert all(x["speedup_vs_default"] == pytest.approx(r[0]["ms_per_image"] / x["ms_per_image"]) for x in r)
    ops = payload["profiles"]["default batch 2"]
    assert ops and any("conv" in op["op"] for op in ops)


def test_floor_matmul_flops_equal_pytorch_count():
    """The floor's analytic FLOPs per scale step equal what PyTorch's FLOP counter sees (matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from bench.floor import conditioning_costs, transformer_step_costs
    from var_engine import TransformerConfig
    from var_engine.cache import KVCache
    from var_engine.transformer import VARTransformer

    cfg = TransformerConfig(depth=3, embed_dim=64, num_heads=2, num_classes=4, vocab_size=96, z_channels=8,
                            patch_nums=(1, 2, 3))
    model = VARTransformer(cfg).eval()
    cond_counter = FlopCounterMode(display=False)
    with torch.no_grad(), cond_counter:
        cond = model.condition(torch.tensor([0, 1, 4, 4]))
    assert cond_counter.get_total_flops() == conditioning_costs(cfg, rows=4)[0]
    cache = KVCache(batch=2, num_heads=2, head_dim=32, capacities=[cfg.num_tokens] * cfg.depth)
    with torch.no_grad():
        model.step(model.first_input(cond), 0, cond, cache)
        for si in (1, 2):
            x = torch.randn(4, cfg.patch_nums[si] ** 2, cfg.embed_dim)
            counter = FlopCounterMode(display=False)
            with counter:
                model.step(x, si, cond, cache)
            begin, end = cfg.scale_ranges()[si]
            attention = cfg.depth * 4 * 4 * (end - begin) * end * cfg.embed_dim
            word_embed = 2 * 4 * (end - begin) * cfg.z_channels * cfg.embed_dim
            matmuls = counter.get_flop_counts()["Global"][torch.ops.aten.addmm]
            assert transformer_step_costs(cfg, 4, si)[0] - attention - word_embed == matmuls


def test_quality_smoke(results):
    import numpy as np

    from bench import quality

    quality.main(["--per-class", "3", "--cfgs", "1.5", "--depths", "2", "--top-k", "1", "--top-p", "0.5"])
    data = json.loads((results / "quality.json").read_text())
    assert (data["top_k"], data["top_p"]) == (1, 0.5)  # the sampling filters are recorded
    assert "top-k 1, top-p 0.5" in (results / "quality.md").read_text()
    r = rows(results / "quality.json")
    assert len(r) == 3 and r[0]["accuracy"] > 0.95  # the shipped evaluator reads the real held-out digits
    assert all(round(x["accuracy"] * 30, 9).is_integer() for x in r[1:])  # hits among 10 classes x 3 images
    full, subnet = r[1]["heldout_nll"], r[2]["heldout_nll"]
    assert 0 < full < subnet < 10  # nats/token; the depth-2 subnet predicts held-out tokens worse
    assert (results / "quality.md").read_text().startswith("Tokenizer: held-out PSNR")
    ref = results / "ref.npz"  # a user-given reference set in the FID toolkits' layout
    np.savez(ref, arr_0=np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    quality.main(["--per-class", "3", "--cfgs", "1.5", "--reference", str(ref)])
    assert "ref.npz" in (results / "quality.md").read_text()


def test_variant_smoke(results):
    from bench import variant

    variant.main(["--models", "default", "--switch-scales", "4", "--per-class", "3", "--repeats", "1", "--batch", "2",
                  "--no-peak"])
    r = rows(results / "variant.json")
    assert [(x["depth"], x["switch_scale"]) for x in r] == [(8, 7), (4, 4), (2, 4)]
    assert all(x["kv_measured_vs_analytic"] == 1 for x in r)
    # default model: width 128, 7 scales of 1, 4, ..., 64 tokens (155; 30 in the first 4). D/2 at switch 4 keeps
    # 4 * 30 + 4 * 155 of the full network's 8 * 155 cached tokens per layer-row, depth 2 keeps 6 * 30 + 2 * 155
    entries = [8 * 155, 4 * 30 + 4 * 155, 6 * 30 + 2 * 155]
    assert [x["kv_bytes_per_image"] for x in r] == [2 * 4 * 128 * 2 * e for e in entries]  # k,v fp32 C cfg-rows
    assert [x["kv_saving_vs_full"] for x in r] == pytest.approx([1 - e / entries[0] for e in entries])
    # transformer FLOPs per image, scale by scale: 2 x tokens x (the blocks' 12 C^2 each, head C V, word
    # embedding z C) plus attention 4 x tokens x prefix x C per block
    C, V, z, pn = 128, 512, 16, (1, 2, 3, 4, 5, 6, 8)  # the default model (MLP ratio 4: 12 C^2 per block)

    def flops(depth_after_4):
        total, end = 0, 0
        for si, p in enumerate(pn):
            l, d = p * p, 8 if si < 4 else depth_after_4
            end += l
            total += 2 * l * (d * 12 * C * C + C * V + z * C) + 4 * d * l * end * C
        return total

    assert [x["flop_fraction"] for x in r] == pytest.approx([flops(d) / flops(8) for d in (8, 4, 2)], rel=1e-12)
    assert r[0]["flop_fraction"] == 1 and r[0]["speedup_at_flop_ratio"] == pytest.approx(1)
    # the projection is the formula on the row's own times: the full network's are the plan's times its speed-ups
    for x in r:
        assert all_finite(x, ["s_per_image", "transformer_s_per_image", "speedup_vs_full",
                              "transformer_speedup_vs_full", "speedup_at_flop_ratio"])
        full_s = x["speedup_vs_full"] * x["s_per_image"]
        full_tokens_s = x["transformer_speedup_vs_full"] * x["transformer_s_per_image"]
        assert x["speedup_at_flop_ratio"] == pytest.approx(
            full_s / (full_s - full_tokens_s + full_tokens_s * x["flop_fraction"]))
    assert (results / "variant_default_speed.png").is_file()


def test_draw_smoke(results):
    from bench import draw

    draw.main(["--models", "default", "--batches", "2", "--repeats", "1", "--per-class", "3"])
    r = rows(results / "draw.json")
    assert [(x["plan"], x["batch"]) for x in r] == [("full", 2), ("d4@4", 2), ("d2@3", 2)]
    assert all(all_finite(x, ["release_s_per_image", "fast_s_per_image", "speedup"]) for x in r)
    assert all(x["speedup"] == pytest.approx(x["release_s_per_image"] / x["fast_s_per_image"]) for x in r)
    # accuracy: hits among 10 classes x 3 images; the FID-style distance of a generated set to real digits
    assert all(round(x[f"{d}_accuracy"] * 30, 9).is_integer() and x[f"{d}_fid"] > 0
               for x in r for d in ("release", "fast"))
    assert (results / "draw.png").is_file()


def test_memory_and_speed_smoke(results):
    from bench import memory, speed

    memory.main(["--batches", "1,2", "--no-peak"])
    m = rows(results / "memory.json")
    assert len(m) == 8 and all(x["kv_vs_analytic"] == 1 for x in m)
    speed.main(["--batches", "1,2", "--repeats", "1"])
    s = rows(results / "speed.json")
    assert [x["batch"] for x in s] == [1, 2] and all(all_finite(x, ["s_per_image", "tokens_per_s"]) for x in s)
    assert all(x["tokens_per_s"] == pytest.approx(x["batch"] * 155 / x["transformer_s"]) for x in s)  # 155 tokens
    assert all(x["decode_share"] == pytest.approx(x["decode_s"] / (x["batch"] * x["s_per_image"])) for x in s)
    assert (results / "memory.png").is_file() and (results / "speed.png").is_file()


def test_peak_memory_of_a_call_in_a_fresh_process(results):
    from bench.peak import CallSpec, peak_call_bytes
    from var_engine import Pipeline

    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak resident-set measurement needs Linux /proc")
    full = peak_call_bytes(CallSpec("default", 16, threads=2))
    subnet = peak_call_bytes(CallSpec("default", 16, depth=2, switch_scale=4, threads=2))
    pipe = Pipeline.from_pretrained()
    kv_full = 16 * pipe.kv_bytes_per_image(1.5)
    kv_subnet = 16 * pipe.kv_bytes_per_image(1.5, pipe.depth_plan(2, 4))
    # the full network's cache (40.6 MB) is resident at its last scale, next to the activations
    assert full > kv_full
    # same activations, decoder and sampling buffers: the difference is mostly the KV cache (24.6 MB)
    assert full - subnet > 0.5 * (kv_full - kv_subnet)


def test_frontier_schedule_lists_keep_stage_ratios_together():
    from bench.supernet_frontier import split_schedules

    assert split_schedules("progressive,progressive:0.2,0.7,0.1@0.3,0.8,fixed:0.5,progressive+distill:0.5") == [
        "progressive", "progressive:0.2,0.7,0.1@0.3,0.8", "fixed:0.5", "progressive+distill:0.5"]


def test_supernet_frontier_smoke_and_resume(results, capsys):
    from bench import supernet_frontier

    common = ["--steps", "2", "--batch-size", "8", "--depth", "2", "--width", "32", "--subnets", "1",
              "--augment-copies", "1", "--per-class", "1"]
    supernet_frontier.main(["--schedules", "fixed:0.5"] + common)
    first = rows(results / "supernet_frontier.json")
    # a rerun with the same settings keeps the measured schedule and adds the new one
    supernet_frontier.main(["--schedules", "fixed:0.5,progressive+distill:0.5"] + common)
    assert "fixed:0.5: measured by an earlier run" in capsys.readouterr().out
    r = rows(results / "supernet_frontier.json")
    assert [x["schedule"] for x in r] == ["fixed:0.5", "progressive+distill:0.5"]
    assert r[0] == first[0]
    assert {"full_fid", "d1_fid", "d1_accuracy"} <= set(r[1])
    assert (results / "supernet_frontier.png").is_file()
    with pytest.raises(SystemExit, match="suffix"):
        supernet_frontier.main(["--schedules", "progressive+ema"] + common)
    # other settings start over
    supernet_frontier.main(["--schedules", "progressive"] + common[2:] + ["--steps", "3"])
    assert [x["schedule"] for x in rows(results / "supernet_frontier.json")] == ["progressive"]


def test_bench_dispatch_via_cli(results, capsys):
    from var_engine.cli import main

    assert main(["bench", "speed", "--batches", "1", "--repeats", "1"]) == 0
    payload = json.loads((results / "speed.json").read_text())  # the arguments reached the benchmark
    assert [x["batch"] for x in payload["rows"]] == [1] and payload["repeats"] == 1


def test_official_side_by_side(tmp_path, monkeypatch):
    path = os.environ.get("VAR_OFFICIAL_DIR")
    if not path:
        pytest.skip("set VAR_OFFICIAL_DIR to a FoundationVision/VAR checkout to compare with the official code")
    monkeypatch.setenv("VAR_ENGINE_BENCH_RESULTS", str(tmp_path))
    from bench import official

    official.main(["--official-dir", path, "--model", "d16", "--batches", "1", "--repeats", "1"])
    measured = rows(tmp_path / "official_d16.json")
    assert all(r["same_images"] for r in measured)
    # fp32: both caches hold the same keys and values at their largest (official's read from its modules)
    assert all(r["kv_bytes_official"] == r["kv_bytes_var_engine"] > 0 for r in measured)
    # the two decoders turn the same latents into the same images
    assert all(r["decode_max_diff"] < 1e-3 and r["official_decode_s_per_image"] > 0 for r in measured)
    # each row carries the physical floor and both implementations' time over it (and, on CPU, the matmul rate)
    floor_cols = ["floor_s_per_image", "var_engine_x_floor", "official_x_floor", "floor_transformer_s_per_image",
                  "floor_decode_s_per_image", "matmul_flops_per_s", "matmul_vs_peak"]
    assert all(0 < r[c] < math.inf for r in measured for c in floor_cols)
    assert all(r["var_engine_x_floor"] / r["official_x_floor"] == pytest.approx(1 / r["speedup"]) for r in measured)


def test_allocator_smoke(results):
    from bench import allocator
    from var_engine.cpu_memory import glibc_malloc

    allocator.main(["--batch", "2", "--plans", "full,2@3", "--pairs", "1", "--repeats", "1"])
    payload = json.loads((results / "allocator.json").read_text())
    assert [r["plan"] for r in payload["rows"]] == ["full", "2@3"]
    # one process per setting and pair, and the setting took effect only where malloc is glibc's
    assert sorted(r["setting"] for r in payload["runs"]) == ["default", "keep"]
    assert all(r["applied"] == (glibc_malloc() is not None) for r in payload["rows"])
    # one pair: each median is that pair's own measurement, and the speed-ups are its ratio
    for row in payload["rows"]:
        measured = {run["setting"]: run["s_per_image"][row["plan"]] for run in payload["runs"]}
        assert all_finite(row, ["default_s_per_image", "keep_s_per_image", "speedup"])
        assert (row["default_s_per_image"], row["keep_s_per_image"]) == (measured["default"], measured["keep"])
        assert row["speedup"] == row["pair_speedup_min"] == row["pair_speedup_max"] == pytest.approx(
            measured["default"] / measured["keep"])
    with pytest.raises(SystemExit, match="plan"):
        allocator.main(["--plans", "2-3"])


def test_quality_sampling_filters_reach_the_sampler(results):
    import torch

    from bench import quality
    from var_engine import Pipeline

    pipe = Pipeline.from_pretrained()
    greedy = [quality.generate_set(pipe, 1, 1.5, seed, top_k=1)[0] for seed in (0, 1)]
    assert torch.equal(*greedy)  # top-k 1 draws the argmax: the seed no longer matters
    sampled = [quality.generate_set(pipe, 1, 1.5, seed)[0] for seed in (0, 1)]
    assert not torch.equal(*sampled)


def test_search_smoke(results):
    from bench import search
    from var_engine import Pipeline
    from var_engine.search import run_cost

    search.main(["--per-class", "1", "--budgets", "1.5", "--judge-steps", "5", "--chunk", "10", "--finish-scales", "5"])
    payload = json.loads((results / "search.json").read_text())
    r = {x["method"].replace(" [evaluator]", ""): x for x in payload["rows"]}
    assert list(r) == ["plain (full depth)", "plain (d2@1)", "best-of-N B=1.5", "TTS B=1.5", "best-of-N B=3",
                       "plain (d2@1 finish@5)", "best-of-N B=1.5 finish@5", "TTS B=1.5 finish@5",
                       "best-of-N B=3 finish@5"]
    finishing = run_cost(Pipeline.from_pretrained().config.transformer, [1] * 7, [8, 2, 2, 2, 2, 8, 8],
                         [0, 0, 0, 0, 0, 1, 0])  # the refill re-runs scales 0-4 at full depth
    assert r["plain (d2@1 finish@5)"]["compute"] == pytest.approx(finishing)
    assert r["best-of-N B=3 finish@5"]["compute"] == pytest.approx(int(3 / finishing) * finishing)
    for name in ("plain (d2@1 finish@5)", "best-of-N B=1.5 finish@5", "TTS B=1.5 finish@5", "best-of-N B=3 finish@5"):
        r.pop(name)
    payload["comparisons"] = [c for c in payload["comparisons"] if "finish" not in c["tts"]]
    cfg = Pipeline.from_pretrained().config.transformer
    sub = run_cost(cfg, [1] * 7, [8, 2, 2, 2, 2, 2, 2])  # depth 2 after the first scale
    assert r["plain (full depth)"]["compute"] == pytest.approx(1.0)
    assert r["plain (d2@1)"]["compute"] == pytest.approx(sub)
    for b in (1.5, 3):  # Best-of-N takes as many subnet samples as the budget buys
        assert r[f"best-of-N B={b:g}"]["compute"] == pytest.approx(int(b / sub) * sub)
    assert 1.0 < r["TTS B=1.5"]["compute"] <= 1.5 and r["TTS B=1.5"]["decodes_per_image"] > 1
    assert r["plain (full depth)"]["decodes_per_image"] == 0 and r["plain (full depth)"]["overhead_share"] == 0
    assert all(round(x["judge_accuracy"] * 10, 5).is_integer() for x in r.values())  # hits among 10 requests (float32)
    comparisons = [{k: v.replace(" [evaluator]", "") if isinstance(v, str) else v for k, v in c.items()}
                   for c in payload["comparisons"]]
    assert [c["vs"] for c in comparisons] == ["best-of-N B=1.5", "best-of-N B=3", "plain (full depth)"]
    for c in comparisons:  # paired differences of the rows' own accuracies, inside their interval
        diff = r[c["tts"]]["judge_accuracy"] - r[c["vs"]]["judge_accuracy"]
        assert c["accuracy_diff"] == pytest.approx(diff) and c["ci95_low"] <= diff + 1e-9 <= c["ci95_high"] + 2e-9
        assert c["fid_diff"] == pytest.approx(r[c["tts"]]["fid"] - r[c["vs"]]["fid"])
    assert (results / "search.png").is_file()
