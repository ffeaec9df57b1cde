"""Tiny training runs: losses fall, a killed run resumes to the same weights, torchrun works."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import var_engine.train_transformer as tt
from var_engine import CheckpointError, ModelConfig, TokenizerConfig, TransformerConfig
from var_engine.data import ImageFolderDataset
from var_engine.tokenizer import Tokenizer
from var_engine.train_tokenizer import train_tokenizer
from var_engine.training import TrainConfig
from var_engine.variant import SupernetPlan

PN = (1, 2, 4)
TOK = TokenizerConfig(vocab_size=32, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, norm_groups=8,
                      using_sa=False, using_mid_sa=False, patch_nums=PN)
VAR = TransformerConfig(depth=4, embed_dim=32, num_heads=2, num_classes=2, vocab_size=32, z_channels=8, patch_nums=PN)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(0)
    for c, colour in enumerate([(255, 0, 0), (0, 0, 255)]):
        (root / f"class{c}").mkdir()
        for i in range(12):
            arr = (torch.rand(16, 16, 3, generator=g) * 60).to(torch.uint8).numpy()
            arr[4:12, 4:12] = colour
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root


def small_cfg(out, steps, **kw):
    settings = dict(batch_size=8, lr=3e-3, warmup_steps=2, log_every=1, eval_every=1000, ckpt_every=1000)
    return TrainConfig(out_dir=str(out), steps=steps, **{**settings, **kw})


def test_tokenizer_training_reduces_loss(folder, tmp_path):
    ds = ImageFolderDataset(folder, size=16)
    train_tokenizer(TOK, small_cfg(tmp_path, 12, ema_decay=0), ds, progress=False)
    import json

    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert (tmp_path / "tokenizer.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()


def _tokenizer_and_data(folder):
    torch.manual_seed(0)
    return Tokenizer(TOK).eval(), ImageFolderDataset(folder, size=16)


def _train(out, folder, steps=6, plan=None, distill=None, teacher=None, init_from=None, **kw):
    tok, ds = _tokenizer_and_data(folder)
    return tt.train_transformer(ModelConfig(TOK, VAR), tok, small_cfg(out, steps, **kw), ds, plan=plan,
                                distill=distill, teacher=teacher, init_from=init_from, progress=False)


def test_killed_run_resumes_to_identical_weights(folder, tmp_path, monkeypatch):
    ref = _train(tmp_path / "ref", folder, ckpt_every=3)
    import var_engine.training as training
    real_save = training.save_state
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        raise KeyboardInterrupt  # as if killed right after the step-3 checkpoint

    monkeypatch.setattr(training, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", folder, ckpt_every=3)
    monkeypatch.setattr(training, "save_state", real_save)
    resumed = _train(tmp_path / "run", folder, ckpt_every=3)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert (tmp_path / "run" / "config.json").is_file() and list((tmp_path / "run").glob("samples_*.png"))


def test_resume_with_another_config_is_refused(folder, tmp_path):
    _train(tmp_path, folder, steps=2, ckpt_every=1)
    with pytest.raises(CheckpointError, match="another config"):
        _train(tmp_path, folder, steps=2, ckpt_every=1, lr=1e-2)


def _lively_model():
    """A transformer with PyTorch's default init: every block matters, so subnets differ from the full network."""
    from var_engine.transformer import VARTransformer

    torch.manual_seed(2)
    return VARTransformer(VAR)


def test_supernet_training_runs_subnet_steps(folder, tmp_path):
    import json

    from var_engine.distillation import Distillation

    plan = SupernetPlan(4, PN, depths=(2,), switch_scales=(1, 2), total_steps=6)
    subnet_steps = [plan.block_tokens(s) is not None for s in range(6)]
    assert any(subnet_steps) and not all(subnet_steps)
    model = _train(tmp_path, folder, steps=6, plan=plan, distill=Distillation(0.5), init_from=_lively_model())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert [r["distill"] > 0 for r in rows] == subnet_steps  # the term exists on subnet steps only


def test_torchrun_two_gloo_processes(folder, tmp_path, capsys):
    """DDP on CPU: 2 processes train a tokenizer and a transformer and write one checkpoint."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
            "-m", "var_engine.cli"]
    common = ["--data", str(folder), "--steps", "3", "--batch-size", "4", "--log-every", "1", "--no-progress"]
    tok = ["train-tokenizer", "--out", str(tmp_path / "tok"), "--image-size", "16", "--patch-nums", "1,2,4",
           "--vocab-size", "32", "--z-channels", "8", "--ch", "16", "--norm-groups", "8", "--no-attn"]
    r = subprocess.run(base + tok + common, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    var = ["train", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "var"), "--depth", "2",
           "--width", "32", "--heads", "2", "--augment-copies", "1"]
    r = subprocess.run(base + var + common, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    from var_engine import Pipeline

    pipe = Pipeline.from_pretrained(tmp_path / "var")
    out = pipe.generate([0, 1], seed=0)
    assert out.images.shape == (2, 3, 16, 16) and 0 <= out.images.min() and out.images.max() <= 1
    # the checkpoint samples reproducibly, and its images are its tokenizer's decoding of the drawn tokens
    assert torch.equal(pipe.generate([0, 1], seed=0).tokens, out.tokens)
    with torch.no_grad():
        torch.testing.assert_close(pipe.tokenizer.decode(out.tokens).add(1).mul(0.5), out.images)

    # a frozen teacher on every step: the first step's student is the teacher itself
    from var_engine.cli import main

    assert main(["train", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "distilled"),
                 "--init-from", str(tmp_path / "var"), "--distill", "1.0", "--distill-teacher", str(tmp_path / "var"),
                 "--lr", "1e-2", "--warmup-steps", "0", "--ema", "0", "--augment-copies", "1", *common]) == 0
    rows = [json.loads(line) for line in (tmp_path / "distilled" / "train.jsonl").read_text().splitlines()]
    assert rows[0]["distill"] < 1e-6 < rows[-1]["distill"]
    config = json.loads((tmp_path / "distilled" / "config.json").read_text())
    assert config["fine_tune"]["distill"]["teacher"] == str(tmp_path / "var")
    from var_engine import default_checkpoint_dir

    if (default_checkpoint_dir() / "config.json").is_file():  # a teacher of another vocabulary is refused
        assert main(["train", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "other"),
                     "--distill", "1.0", "--distill-teacher", str(default_checkpoint_dir()), *common]) == 2
        assert "must share the trained model's vocabulary" in capsys.readouterr().err


def _subnet_gap(model, folder) -> float:
    """Mean KL(full network || depth-2 subnet after scale 1) on teacher-forced data tokens."""
    from var_engine.distillation import distill_loss
    from var_engine.variant import DepthPlan

    tok, ds = _tokenizer_and_data(folder)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        x = tok.teacher_input(tok.encode(images))
        model.eval()
        full = model(labels, x)
        sub = model(labels, x, DepthPlan(4, 2, 1, PN).block_tokens())
    return distill_loss(sub, full, torch.full((full.shape[1],), 1 / full.shape[1])).item()


def test_inplace_distillation_pulls_subnets_toward_the_full_network(folder, tmp_path):
    from var_engine.distillation import Distillation
    from var_engine.variant import SupernetSchedule

    plan = SupernetPlan(4, PN, depths=(2,), switch_scales=(1,), total_steps=20,
                        schedule=SupernetSchedule(kind="fixed", fixed_ratio=1.0))
    start = _lively_model()
    kw = dict(steps=20, plan=plan, ema_decay=0, init_from=start, lr=1e-3)
    plain = _train(tmp_path / "plain", folder, **kw)
    taught = _train(tmp_path / "taught", folder, distill=Distillation(1.0), **kw)
    # subnet steps only: cross-entropy lets the subnet drift from the full network, distillation closes the gap
    assert _subnet_gap(taught, folder) < 0.8 * _subnet_gap(plain, folder)


def test_distillation_from_a_frozen_teacher_every_step(folder, tmp_path):
    import json

    from var_engine.distillation import Distillation
    from var_engine.transformer import VARTransformer

    torch.manual_seed(1)
    teacher = VARTransformer(VAR)
    teacher.init_weights()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    _train(tmp_path, folder, steps=3, ema_decay=0, distill=Distillation(1.0), teacher=teacher)
    rows = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert all(r["distill"] > 0 for r in rows)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())  # frozen


def test_resume_with_another_supernet_schedule_is_refused(folder, tmp_path):
    from var_engine.variant import SupernetSchedule

    def plan(ratio):
        return SupernetPlan(4, PN, depths=(2,), switch_scales=(1,), total_steps=2,
                            schedule=SupernetSchedule(kind="fixed", fixed_ratio=ratio))

    _train(tmp_path, folder, steps=2, ckpt_every=1, plan=plan(0.5))
    with pytest.raises(CheckpointError, match="another config"):
        _train(tmp_path, folder, steps=2, ckpt_every=1, plan=plan(0.9))


def test_selective_training_freezes_the_rest_and_resume_notices_the_trainable_set(folder, tmp_path):
    from var_engine.training import EMA

    init = _lively_model()
    ema = EMA(init, 0.9, [init.head.weight])
    assert ema.names == ["head.weight"] and set(ema.state_dict()) == {"head.weight"}  # frozen tensors not copied
    tok, ds = _tokenizer_and_data(folder)
    head_only = lambda m: m.head.parameters()  # noqa: E731
    model = tt.train_transformer(ModelConfig(TOK, VAR), tok, small_cfg(tmp_path, 2, ckpt_every=1, ema_decay=0.9), ds,
                                 init_from=init, trainable=head_only,
                                 progress=False)
    moved = [n for (n, a), b in zip(init.state_dict().items(), model.state_dict().values()) if not torch.equal(a, b)]
    assert moved and all(n.startswith("head.") for n in moved), moved
    with pytest.raises(CheckpointError, match="another config"):
        tt.train_transformer(ModelConfig(TOK, VAR), tok, small_cfg(tmp_path, 2, ckpt_every=1, ema_decay=0.9), ds,
                             init_from=init,
                             trainable=lambda m: m.head_nm.parameters(), progress=False)
    with pytest.raises(CheckpointError, match="another config"):
        tt.train_transformer(ModelConfig(TOK, VAR), tok, small_cfg(tmp_path, 2, ckpt_every=1, ema_decay=0.9), ds,
                             init_from=init, trainable=head_only,
                             loss_weight_L=torch.arange(1, 22.0), progress=False)


def test_image_folder_augments_training_copies(folder):
    from var_engine.data import build_dataset

    plain, augmented = build_dataset(str(folder), "train", 16), build_dataset(str(folder), "train", 16, augment=True)
    assert not torch.equal(plain[0][0], augmented[0][0])
    first = augmented[0][0]
    assert torch.equal(augmented[0][0], first)  # the same copy within an epoch
    augmented.set_epoch(1)
    assert not torch.equal(augmented[0][0], first)
