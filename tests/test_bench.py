"""Every benchmark runs in a small smoke configuration and writes its JSON/markdown (and PNGs)."""
import json
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


def test_sampler_smoke(results):
    from bench import sampler

    sampler.main(["--models", "default", "--batches", "2", "--repeats", "1", "--profile"])
    r = rows(results / "sampler.json")
    assert len(r) == 2 and all(x["same_tokens_as_first"] for x in r) and all(x["kv_vs_analytic"] == 1 for x in r)
    assert all(x["x_floor"] > 1 for x in r)  # nothing beats the physical floor
    ops = json.loads((results / "sampler.json").read_text())["profiles"]["default batch 2, var-engine eager"]
    assert any("addmm" in op["op"] or "linear" in op["op"] for op in ops) and 0 < sum(op["share"] for op in ops) <= 1


def test_decoder_smoke(results):
    from bench import decoder

    decoder.main(["--models", "default", "--batches", "2", "--repeats", "1", "--profile"])
    payload = json.loads((results / "decoder.json").read_text())
    r = payload["rows"]
    # CPU: memory format x sub-pixel upsampling x conv algorithm, the engine's default setting first
    assert [(x["channels_last"], x["subpixel"], x["conv"]) for x in r] == [
        (cl, sp, conv) for cl in (True, False) for sp in (True, False) for conv in ("auto", "direct")]
    assert r[0]["speedup_vs_default"] == 1 and all(x["x_floor"] > 1 for x in r)
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
    assert len(r) == 3 and all(0 <= x["accuracy"] <= 1 for x in r)
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
    assert [x["depth"] for x in r] == [8, 4, 2] and all(x["kv_measured_vs_analytic"] == 1 for x in r)
    assert r[1]["kv_saving_vs_full"] > 0.4  # D/2 at switch 4: (4*30 + 4*155) / (8*155) = 0.60
    assert r[0]["flop_fraction"] == 1 and r[0]["speedup_at_flop_ratio"] == pytest.approx(1)
    # depth 2 after 4 scales: 6 of 8 layers skip the last 3 scales' 125 of 155 tokens (linear layers
    # dominate at width 128; the head runs at every depth), so about (6 * 30 + 2 * 155) / (8 * 155) remain
    assert r[2]["flop_fraction"] == pytest.approx((6 * 30 + 2 * 155) / (8 * 155), rel=0.05)
    assert r[2]["flop_fraction"] < r[1]["flop_fraction"] < 1
    assert all(1 < x["speedup_at_flop_ratio"] < 1 / x["flop_fraction"] for x in r[1:])
    assert (results / "variant_default_speed.png").is_file()


def test_draw_smoke(results):
    from bench import draw

    draw.main(["--models", "default", "--batches", "2", "--repeats", "1", "--per-class", "3"])
    r = rows(results / "draw.json")
    assert [x["plan"] for x in r] == ["full", "d4@4", "d2@3"] and all(x["speedup"] > 0 for x in r)
    assert all(0 <= x[f"{d}_accuracy"] <= 1 and x[f"{d}_fid"] > 0 for x in r for d in ("release", "fast"))
    assert (results / "draw.png").is_file()


def test_memory_and_speed_smoke(results):
    from bench import memory, speed

    memory.main(["--batches", "1,2", "--no-peak"])
    m = rows(results / "memory.json")
    assert len(m) == 8 and all(x["kv_vs_analytic"] == 1 for x in m)
    speed.main(["--batches", "1,2", "--repeats", "1"])
    s = rows(results / "speed.json")
    assert len(s) == 2 and all(x["tokens_per_s"] > 0 for x in s)
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
    assert (results / "speed.json").is_file()


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


def test_allocator_smoke(results):
    from bench import allocator
    from var_engine.cpu_memory import glibc_malloc

    allocator.main(["--batch", "2", "--plans", "full,2@3", "--pairs", "1", "--repeats", "1"])
    payload = json.loads((results / "allocator.json").read_text())
    assert [r["plan"] for r in payload["rows"]] == ["full", "2@3"]
    # one process per setting and pair, and the setting took effect only where malloc is glibc's
    assert sorted(r["setting"] for r in payload["runs"]) == ["default", "keep"]
    assert all(r["applied"] == (glibc_malloc() is not None) for r in payload["rows"])
    assert all(r["default_s_per_image"] > 0 and r["keep_s_per_image"] > 0 for r in payload["rows"])
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
