"""Subject fine-tuning: the scale-weighted loss, freezing, the prior, a tiny end-to-end tune, the CLI."""
import json

import pytest
import torch
import torch.nn.functional as F

from var_engine import CheckpointError, ConfigError, InputError, ModelConfig, Pipeline, TokenizerConfig, TransformerConfig
from var_engine.checkpoints import read_adapter, save_adapter
from var_engine.data import Augment, load_subject_images
from var_engine.finetune import FinetuneConfig, finetune_subject, prior_labels, scale_weights, token_weights
from var_engine.tokenizer import Tokenizer
from var_engine.train_transformer import token_loss
from var_engine.training import Callback, TrainConfig
from var_engine.transformer import VARTransformer

PN = (1, 2, 3, 4)


def tiny_pipeline(seed=0, num_classes=5):
    torch.manual_seed(seed)
    tok = TokenizerConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                          using_sa=False, using_mid_sa=False, patch_nums=PN)
    var = TransformerConfig(depth=2, embed_dim=32, num_heads=2, num_classes=num_classes, vocab_size=64, z_channels=8,
                            patch_nums=PN)
    return Pipeline(Tokenizer(tok), VARTransformer(var), ModelConfig(tok, var))


def subject_images(n=3, size=16):
    g = torch.Generator().manual_seed(1)
    x = torch.full((n, 3, size, size), -0.8)
    x[:, 0, 4:12, 6:10] = 0.9  # a red bar, shifted a little per picture
    return torch.stack([torch.roll(im, int(torch.randint(-1, 2, (1,), generator=g)), dims=2) for im in x])


def quick(**kw):
    settings = dict(steps=3, lr=1e-2, warmup_steps=1, weight_decay=0.0, ema_decay=0.0, log_every=1, eval_every=1000,
                    ckpt_every=1000)
    return TrainConfig(**{**settings, **kw})


class Capture(Callback):
    """Keeps a copy of the tuned model's parameters at the final evaluation."""

    def on_eval(self, step, model):
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.model = model


def test_scale_weighted_loss_is_the_per_scale_mean_times_the_weight():
    torch.manual_seed(0)
    B, L, V = 3, sum(p * p for p in PN), 11
    logits, tokens = torch.randn(B, L, V), torch.randint(V, (B, L))
    w = [4.0, 2.0, 1.0, 0.5]
    got = token_loss(logits, tokens, token_weights(scale_weights(",".join(map(str, w)), PN), PN))
    ce = F.cross_entropy(logits.transpose(1, 2), tokens, reduction="none")  # (B, L)
    hand, start = 0.0, 0
    for wk, p in zip(w, PN):
        hand += wk * ce[:, start:start + p * p].mean().item()
        start += p * p
    assert got.item() == pytest.approx(hand / sum(w), rel=1e-5)  # float32 sums over a few hundred terms


def test_scale_weight_specs():
    assert torch.allclose(scale_weights("uniform", PN), torch.full((4,), 0.25))
    w = scale_weights("power:1", PN)
    assert torch.allclose(w, torch.tensor([4, 2, 4 / 3, 1.0]) / (4 + 2 + 4 / 3 + 1))
    assert torch.equal(scale_weights("step:2:0.5", PN), torch.tensor([1, 1, 0.5, 0.5]) / 3)
    for bad in ("power:-1", "1,2", "nope", "0,0,0,0", "nan,1,1,1"):
        with pytest.raises(ConfigError):
            scale_weights(bad, PN)


def test_config_validation_and_prior_classes():
    with pytest.raises(ConfigError, match="either"):
        FinetuneConfig()
    with pytest.raises(ConfigError, match="either"):
        FinetuneConfig(class_id=1, new_class=True)
    with pytest.raises(ConfigError, match="unknown trainable group"):
        FinetuneConfig(new_class=True, groups=("ffn", "mlp"))
    with pytest.raises(InputError, match="out of range"):
        FinetuneConfig(class_id=5).subject_class(5)
    assert FinetuneConfig(new_class=True).subject_class(5) == 6  # 5 stays the null class
    labels = prior_labels(FinetuneConfig(class_id=2, prior_samples=7), 5, 2)
    assert labels.tolist() == [0, 1, 3, 4, 5, 0, 1]  # every other class and the null class


def test_tuning_trains_only_the_chosen_groups_and_leaves_the_base_untouched():
    pipe = tiny_pipeline()
    base = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
    cap = Capture()
    res = finetune_subject(pipe.transformer, pipe.tokenizer, subject_images(), FinetuneConfig(new_class=True, rank=2,
                           prior_samples=4, prior_batch=2), quick(), callbacks=[cap])
    for n, p in pipe.transformer.named_parameters():  # the frozen prior is the caller's model: unchanged
        assert torch.equal(p, base[n]), n
    moved = set()
    for n, p in cap.params.items():
        name = n.replace("parametrizations.", "").replace(".original", "")
        if name in base and not torch.equal(p, base[name]):
            moved.add(name)
    # frozen tensors are bit-identical after tuning; what moved is in the trained groups (biases: full tensors)
    assert moved and all(".ffn." in n or "ada_lin" in n for n in moved), moved
    keys = set(res.adapter.tensors)
    assert "class_emb.rows" in keys and any(k.endswith(".lora_A") for k in keys)
    assert not any(".attn." in k or k.startswith(("head.", "word_embed", "pos_")) for k in keys)
    assert res.adapter.class_id == 6 and res.adapter.meta["class_rows"] == [6]
    assert res.trainable_parameters == res.adapter.num_parameters()


def test_tuned_model_and_loaded_adapter_compute_the_same(tmp_path):
    pipe = tiny_pipeline()
    cap = Capture()
    images = subject_images()
    res = finetune_subject(pipe.transformer, pipe.tokenizer, images, FinetuneConfig(class_id=1, rank=2,
                           prior_samples=4, prior_batch=2), quick(), callbacks=[cap])
    path = save_adapter(tmp_path / "s.safetensors", res.adapter)
    tokens = pipe.tokenizer.encode(images)
    x = pipe.tokenizer.teacher_input(tokens)
    labels = torch.tensor([1, 0, 5, 1])
    with torch.no_grad():
        base = pipe.transformer(labels, x[[0, 1, 2, 0]], drop_labels=False)
        tuned = cap.model(labels, x[[0, 1, 2, 0]], drop_labels=False)
        pipe.load_adapter(path)
        loaded = pipe.transformer(labels, x[[0, 1, 2, 0]], drop_labels=False)
        pipe.unload_adapter()
        again = pipe.transformer(labels, x[[0, 1, 2, 0]], drop_labels=False)
    assert torch.equal(loaded, tuned)  # the same merge formula in training and loading
    assert not torch.equal(loaded, base) and torch.equal(again, base)


def test_prior_distillation_keeps_other_classes_closer():
    """More tuning of all layers drifts the other classes; the prior term holds them nearer the frozen model."""
    drift = {}
    for weight in (0.0, 4.0):
        pipe = tiny_pipeline()
        cap = Capture()
        cfg = FinetuneConfig(class_id=0, groups=("all",), rank=0, prior_weight=weight, prior_samples=16,
                             prior_batch=16, prior_cfg=0.0)
        finetune_subject(pipe.transformer, pipe.tokenizer, subject_images(), cfg, quick(steps=12, lr=5e-3),
                         callbacks=[cap])
        labels = prior_labels(cfg, 5, 0)
        out = pipe.generate(torch.where(labels == 5, -1, labels), seed=0, cfg=0.0, decode=False)
        x = pipe.tokenizer.teacher_input(out.tokens)
        with torch.no_grad():
            ref = pipe.transformer(labels, x, drop_labels=False).log_softmax(-1)
            new = cap.model(labels, x, drop_labels=False).log_softmax(-1)
        drift[weight] = (ref.exp() * (ref - new)).sum(-1).mean().item()
    assert drift[4.0] < drift[0.0], drift


def test_subject_images_bad_input(tmp_path):
    from PIL import Image

    good = tmp_path / "good"
    good.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(good / f"{i}.png")
    assert load_subject_images([good], 16).shape == (3, 3, 16, 16)
    with pytest.raises(InputError, match="no subject images"):
        load_subject_images([], 16)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(InputError, match="notes.txt: not a readable image"):
        load_subject_images([good, tmp_path / "notes.txt"], 16)
    png = (good / "0.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(InputError, match="cut.png"):
        load_subject_images([tmp_path / "cut.png"], 16)
    with pytest.raises(InputError, match="pixel limit"):
        load_subject_images([good], 16, max_pixels=1000)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(65):
        (many / f"{i}.png").write_bytes(png)
    with pytest.raises(InputError, match="at most 64"):
        load_subject_images([many], 16)


def test_augment_keeps_orientation_by_default():
    x = torch.zeros(1, 3, 16, 16)
    x[..., :, :4] = 1  # a bar on the left
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        y = Augment()(x, g)
        assert y[..., :, :8].mean() > y[..., :, 8:].mean()  # never mirrored
    assert torch.allclose(Augment(0, 0)(x, g), x, atol=1e-5)  # identity up to grid_sample rounding
    with pytest.raises(ConfigError):
        Augment(shift=0.9)


def test_finetune_resumes_and_refuses_changed_settings(tmp_path):
    pipe = tiny_pipeline()
    cfg = FinetuneConfig(new_class=True, rank=2, prior_samples=4, prior_batch=2)
    train = quick(steps=2, ckpt_every=1)
    a = finetune_subject(pipe.transformer, pipe.tokenizer, subject_images(), cfg, train, run_dir=tmp_path)
    b = finetune_subject(pipe.transformer, pipe.tokenizer, subject_images(), cfg, train, run_dir=tmp_path)
    assert b.steps == 2 and all(torch.equal(a.adapter.tensors[k], b.adapter.tensors[k]) for k in a.adapter.tensors)

    class StopAfterOne(Callback):
        def after_step(self, step):
            return step == 1

    stopped = finetune_subject(pipe.transformer, pipe.tokenizer, subject_images(), cfg, train,
                               run_dir=tmp_path / "split", callbacks=[StopAfterOne()])
    resumed = finetune_subject(pipe.transformer, pipe.tokenizer, subject_images(), cfg, train,
                               run_dir=tmp_path / "split")  # an interrupted tune ends exactly like an uninterrupted one
    assert stopped.steps == 1 and resumed.steps == 2
    assert all(torch.equal(a.adapter.tensors[k], resumed.adapter.tensors[k]) for k in a.adapter.tensors)
    with pytest.raises(CheckpointError, match="another config"):
        finetune_subject(pipe.transformer, pipe.tokenizer, subject_images(), FinetuneConfig(
            new_class=True, rank=2, prior_samples=4, prior_batch=2, groups=("class", "ffn")), train, run_dir=tmp_path)
    with pytest.raises(CheckpointError, match="another config"):
        finetune_subject(pipe.transformer, pipe.tokenizer, subject_images(), FinetuneConfig(
            new_class=True, rank=2, prior_samples=4, prior_batch=2, scale_weights="uniform"), train, run_dir=tmp_path)


def test_cli_finetune_on_a_tiny_official_format_model(tmp_path, capsys):
    from PIL import Image

    from conftest import reference_dir
    from var_engine.cli import main

    root = reference_dir()
    pics = tmp_path / "pics"
    pics.mkdir()
    for i in range(3):
        img = Image.new("RGB", (64, 64), (20, 40, 90))
        img.paste((200, 120, 40), (20 + i, 16, 40 + i, 48))
        img.save(pics / f"{i}.png")
    out = tmp_path / "subject.safetensors"
    args = ["--official-vae", str(root / "vae.safetensors"), "--official-var", str(root / "tiny64_d2" / "var.pth"),
            "--patch-nums", "1,2,3,4"]
    assert main(["finetune", "--images", str(pics), "--class-id", "917", "--steps", "2", "--prior-samples", "4",
                 "--prior-batch", "2", "-o", str(out), "--preview", str(tmp_path / "p.png"), "--no-progress", *args]) == 0
    assert (tmp_path / "p.png").is_file()
    text = capsys.readouterr().out
    assert "trainable parameters:" in text and out.is_file()
    pipe = Pipeline.from_official(root / "vae.safetensors", root / "tiny64_d2" / "var.pth", patch_nums=(1, 2, 3, 4))
    before = pipe.generate([917, 3], seed=0).images
    adapter = pipe.load_adapter(out)
    assert adapter.class_id == 917 and json.loads(json.dumps(adapter.meta))["groups"] == ["class", "ffn", "adaln"]
    tuned = pipe.generate([917, 3], seed=0).images
    pipe.unload_adapter()
    assert not torch.equal(tuned, before) and torch.equal(pipe.generate([917, 3], seed=0).images, before)
    assert read_adapter(out).meta["settings"]["steps"] == 2
    grid = tmp_path / "subject.png"  # `generate --adapter` defaults to the subject's class
    assert main(["generate", "--adapter", str(out), "--num", "2", "--quiet", "-o", str(grid), *args]) == 0
    assert "wrote" in capsys.readouterr().out and grid.is_file()
