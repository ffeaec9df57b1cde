"""The decoder's fast paths compute the same function as the reference formulation."""
import pytest
import torch
import torch.nn.functional as F

from var_engine.config import TokenizerConfig
from var_engine.tokenizer import Tokenizer
from var_engine.tokenizer.vqvae import Decoder, Upsample2x, upsample_conv_subpixel


def small_tokenizer() -> Tokenizer:
    """A seeded 2-level tokenizer in eval mode: 8x8 images, 4x4 latents of 4 channels."""
    torch.manual_seed(0)
    cfg = TokenizerConfig(ch=16, ch_mult=(1, 2), num_res_blocks=1, norm_groups=8, z_channels=4, vocab_size=32,
                          patch_nums=(1, 2, 4))
    return Tokenizer(cfg).eval()


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
    tok = small_tokenizer().set_channels_last(True)
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
    tok = small_tokenizer().set_channels_last(True)
    f_hat = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        images = {layout: tok.set_group_norm_layout(layout).fhat_to_images(f_hat) for layout in ("auto", "native", "keep")}
    assert torch.equal(images["auto"], images["native"])  # the CPU kernel keeps channels-last by itself
    assert len(calls) == sum(isinstance(m, vqvae.LayoutGroupNorm) for m in tok.decoder.modules())  # 'keep' only
    torch.testing.assert_close(images["keep"], images["native"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="layout"):
        tok.set_group_norm_layout("nhwc")


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape, cout", [((2, 5, 12, 16), 7), ((1, 3, 9, 6), 4), ((3, 8, 1, 2), 2), ((1, 4, 33, 20), 5)])
def test_winograd_conv_equals_direct_conv(monkeypatch, channels_last, shape, cout):
    from var_engine.tokenizer import winograd

    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)  # one tile row per chunk: every chunk boundary is exercised
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    weight, bias = torch.randn(cout, shape[1], 3, 3, dtype=torch.float64), torch.randn(cout, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    reference = F.conv2d(x, weight, bias, padding=1)
    out = winograd.conv3x3_winograd(x, winograd.winograd_weight(weight), bias)
    assert out.shape == reference.shape
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(out, reference, atol=1e-11, rtol=1e-11)  # exact algebra: float64 rounding only
    no_bias = winograd.conv3x3_winograd(x, winograd.winograd_weight(weight), None)
    torch.testing.assert_close(no_bias + bias.view(1, -1, 1, 1), reference, atol=1e-11, rtol=1e-11)


def test_winograd_float32_error_is_within_2e_5_of_the_output_scale():
    from var_engine.tokenizer.winograd import conv3x3_winograd, winograd_weight

    torch.manual_seed(0)
    x = torch.randn(2, 160, 32, 32).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(160, 160, 3, 3) / (3 * 160 ** 0.5)
    exact = F.conv2d(x.double(), weight.double(), padding=1)
    err = (conv3x3_winograd(x, winograd_weight(weight), None).double() - exact).abs().max()
    direct_err = (F.conv2d(x, weight, padding=1).double() - exact).abs().max()
    # the transforms' constants (up to 8) cost a few bits over the direct kernel's rounding
    assert err < 2e-5 * exact.abs().max() and err < 20 * direct_err  # observed 1.0e-5 and 7.5x


def test_conv3x3_auto_policy_and_kernel_cache():
    from var_engine.tokenizer.winograd import AUTO_MIN_CHANNELS, AUTO_MIN_SIZE, Conv3x3

    torch.manual_seed(0)
    wide, narrow = Conv3x3(AUTO_MIN_CHANNELS, AUTO_MIN_CHANNELS), Conv3x3(8, AUTO_MIN_CHANNELS)
    x = torch.randn(1, AUTO_MIN_CHANNELS, AUTO_MIN_SIZE, AUTO_MIN_SIZE)
    with torch.no_grad():
        assert wide.uses_winograd(x) and not narrow.uses_winograd(x[:, :8])
        assert not wide.uses_winograd(x[..., :AUTO_MIN_SIZE - 1, :])  # too small an image
        assert not wide.uses_winograd(x.double())  # auto keeps float64 on the direct kernel
        wide.algorithm = "direct"
        assert not wide.uses_winograd(x)
        narrow.algorithm = "winograd"
        assert narrow.uses_winograd(x[:, :8])
        wide.algorithm = "auto"
        out = wide(x)
        torch.testing.assert_close(out, F.conv2d(x, wide.weight, wide.bias, padding=1), atol=5e-5, rtol=0)  # Winograd float32
        kernel = wide.winograd_kernel()
        assert wide.winograd_kernel() is kernel  # cached
        wide.load_state_dict({"weight": torch.randn_like(wide.weight) / 34, "bias": wide.bias})  # outputs of order 1
        assert wide.winograd_kernel() is not kernel  # rebuilt after the weight changed
        torch.testing.assert_close(wide(x), F.conv2d(x, wide.weight, wide.bias, padding=1), atol=5e-5, rtol=0)
        assert wide.cache_bytes() == 36 * AUTO_MIN_CHANNELS * AUTO_MIN_CHANNELS * 4  # the 6x6 kernels, fp32
        wide.to(memory_format=torch.channels_last)
        assert wide.cache_bytes() == 0  # converting (or moving, casting) the module drops the cached kernel
    assert not wide.uses_winograd(x)  # autograd: always the direct kernel
    assert wide(x).requires_grad


def test_tokenizer_conv_algorithms_decode_the_same_images():
    from var_engine.tokenizer.winograd import Conv3x3

    tok = small_tokenizer().set_channels_last(True)
    f_hat = torch.randn(3, 4, 4, 4)
    with torch.no_grad():
        images = {a: tok.set_conv_algorithm(a).fhat_to_images(f_hat) for a in ("direct", "winograd")}
    torch.testing.assert_close(images["winograd"], images["direct"], atol=1e-5, rtol=1e-5)
    # every 3x3 convolution of the decoder ran as Winograd and cached 36 Cin Cout floats; the encoder's did not run
    convs = [m for m in tok.decoder.modules() if isinstance(m, Conv3x3)]
    assert tok.conv_cache_bytes() == sum(36 * m.in_channels * m.out_channels * 4 for m in convs)
    assert tok.set_conv_algorithm("direct").conv_cache_bytes() == 0
    with pytest.raises(ValueError, match="conv algorithm"):
        tok.set_conv_algorithm("fft")


def test_conv3x3_winograd_under_inference_mode():
    from var_engine.tokenizer.winograd import Conv3x3

    with torch.inference_mode():  # weights made here are inference tensors without a version counter
        conv = Conv3x3(4, 6)
        conv.algorithm = "winograd"
        x = torch.randn(2, 4, 8, 8)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-5, rtol=1e-5)
        assert conv.cache_bytes() == 36 * 4 * 6 * 4


def test_channels_last_encoding_gives_the_same_tokens():
    tok = small_tokenizer()
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    plain_latent, plain = tok.encode_latent(images).detach(), tok.encode(images)
    tok.set_channels_last(True)
    assert tok.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    latent = tok.encode_latent(images).detach()
    assert latent.is_contiguous()  # the quantizer gets the default layout
    torch.testing.assert_close(latent, plain_latent, atol=1e-5, rtol=1e-5)
    assert torch.equal(tok.encode(images), plain)
