"""The decoder's fast paths compute the same function as the reference formulation."""
import pytest
import torch
import torch.nn.functional as F

from var_engine.config import TokenizerConfig
from var_engine.tokenizer import Tokenizer
from var_engine.tokenizer.vqvae import Decoder, Upsample2x, upsample_conv_subpixel


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 16, 4, 4)])
def test_subpixel_upsample_equals_interpolate_then_conv(channels_last, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    conv = torch.nn.Conv2d(shape[1], 6, 3, padding=1)
    reference = conv(F.interpolate(x, scale_factor=2, mode="nearest"))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out = upsample_conv_subpixel(x, conv.weight, conv.bias)
    assert out.shape == reference.shape
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    no_bias = upsample_conv_subpixel(x, conv.weight, None)
    torch.testing.assert_close(no_bias + conv.bias.view(1, -1, 1, 1), reference, atol=1e-5, rtol=1e-5)


def test_decoder_fast_eval_path_matches_training_formulation():
    torch.manual_seed(0)
    cfg = TokenizerConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8, z_channels=4)
    decoder = Decoder(cfg)
    z = torch.randn(2, 4, 4, 4)
    decoder.train()  # reference path: interpolate + conv, out-of-place activations, gradients flow
    reference = decoder(z)
    reference.sum().backward()
    assert all(p.grad is not None for p in decoder.parameters())
    decoder.eval()
    with torch.no_grad():
        fast = decoder(z)
        for m in decoder.modules():
            if isinstance(m, Upsample2x):
                m.subpixel = False
        plain = decoder(z)
    torch.testing.assert_close(fast, reference.detach(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(plain, reference.detach(), atol=1e-6, rtol=1e-6)


def test_cpu_decode_in_micro_batches_equals_one_call():
    torch.manual_seed(0)
    cfg = TokenizerConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8, z_channels=4, vocab_size=32,
                          patch_nums=(1, 2, 4))
    tok = Tokenizer(cfg).eval().set_channels_last(True)
    # largest activation per image: 16 channels at 8x8 (level 0) vs 32 at 4x4: 16 * 64 * 4 bytes
    assert tok.decode_activation_bytes() == 16 * 8 * 8 * 4
    cpu = torch.device("cpu")
    tok.cpu_decode_chunk_bytes = 2 * tok.decode_activation_bytes()
    assert tok.decode_chunk(5, cpu) == 2 and tok.decode_chunk(1, cpu) == 1
    assert tok.decode_chunk(5, torch.device("cuda")) == 5  # GPUs decode the whole batch
    f_hat = torch.randn(5, 4, 4, 4)
    with torch.no_grad():
        chunked = tok.fhat_to_images(f_hat)
        whole = tok.fhat_to_images_at_once(f_hat)
    assert chunked.shape == whole.shape == (5, 3, 8, 8)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    tok.cpu_decode_chunk_bytes = None
    assert tok.decode_chunk(5, cpu) == 5


@pytest.mark.parametrize("shape, groups", [((2, 32, 5, 7), 8), ((3, 16, 4, 4), 16), ((1, 12, 1, 1), 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_group_norm_equals_native(shape, groups, dtype):
    from var_engine.tokenizer.vqvae import group_norm_channels_last

    torch.manual_seed(0)
    x = (torch.randn(shape) * 3 + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(shape[1]), torch.randn(shape[1])
    out = group_norm_channels_last(x, groups, weight, bias, 1e-6)
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    reference = F.group_norm(x.float(), groups, weight, bias, 1e-6)
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.float(), reference, atol=tol, rtol=tol)


def test_decoder_group_norm_layouts_decode_the_same_images(monkeypatch):
    from var_engine.tokenizer import vqvae

    calls = []
    own = vqvae.group_norm_channels_last
    monkeypatch.setattr(vqvae, "group_norm_channels_last", lambda *a: calls.append(1) or own(*a))
    torch.manual_seed(0)
    cfg = TokenizerConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8, z_channels=4, vocab_size=32,
                          patch_nums=(1, 2, 4))
    tok = Tokenizer(cfg).eval().set_channels_last(True)
    f_hat = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        images = {layout: tok.set_group_norm_layout(layout).fhat_to_images(f_hat) for layout in ("auto", "native", "keep")}
    assert torch.equal(images["auto"], images["native"])  # the CPU kernel keeps channels-last by itself
    assert len(calls) == sum(isinstance(m, vqvae.LayoutGroupNorm) for m in tok.decoder.modules())  # 'keep' only
    torch.testing.assert_close(images["keep"], images["native"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layout"):
        tok.set_group_norm_layout("nhwc")
