"""Adapter files: round trip, validation, switching per call and per thread, bit-exact unloading."""
import threading

import pytest
import torch

from var_engine import CheckpointError, ConfigError, InputError
from var_engine.checkpoints import Adapter, model_fingerprint, read_adapter, save_adapter
from var_engine.finetune import FinetuneConfig, finetune_subject

from test_finetune import quick, subject_images, tiny_pipeline


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two subjects tuned on one base: a new class (class row only) and class 1 (default groups)."""
    root = tmp_path_factory.mktemp("adapters")
    pipe = tiny_pipeline()
    images = subject_images()
    new = finetune_subject(pipe.transformer, pipe.tokenizer, images, FinetuneConfig(
        new_class=True, groups=("class",), prior_weight=0.0), quick(lr=0.1)).adapter
    old = finetune_subject(pipe.transformer, pipe.tokenizer, images.flip(1), FinetuneConfig(
        class_id=1, rank=2, prior_samples=4, prior_batch=2), quick()).adapter
    return save_adapter(root / "new.safetensors", new), save_adapter(root / "old.safetensors", old)


def params(pipe):
    return {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}


def test_round_trip_keeps_tensors_and_metadata(adapters, tmp_path):
    a = read_adapter(adapters[1])
    again = read_adapter(save_adapter(tmp_path / "copy.safetensors", a))
    assert set(a.tensors) == set(again.tensors) and all(torch.equal(a.tensors[k], again.tensors[k]) for k in a.tensors)
    assert {k: v for k, v in again.meta.items() if k != "path"} == {k: v for k, v in a.meta.items() if k != "path"}
    assert a.meta["base_fingerprint"] == model_fingerprint(tiny_pipeline().transformer)
    assert adapters[1].stat().st_size < 64 * 1024 and not list(tmp_path.glob(".*.tmp"))


def test_new_class_leaves_existing_classes_and_the_null_class_bit_identical(adapters):
    pipe = tiny_pipeline()
    base = pipe.generate([0, 3, -1], seed=5)
    with pytest.raises(InputError, match="out of range"):
        pipe.parse_labels([6])
    adapter = pipe.load_adapter(adapters[0])
    assert adapter.class_id == 6 and pipe.adapter_class_ids() == [6]
    assert pipe.parse_labels([6, -1]).tolist() == [6, 5]  # the null class keeps id num_classes
    same = pipe.generate([0, 3, -1], seed=5)
    assert torch.equal(same.images, base.images) and torch.equal(same.tokens, base.tokens)
    subject = pipe.generate([6, 6], seed=5).images
    pipe.unload_adapter()
    with pytest.raises(InputError, match="out of range"):
        pipe.parse_labels([6])
    assert subject.shape == base.images[:2].shape


def test_unloading_restores_the_base_bit_for_bit(adapters, tmp_path):
    pipe = tiny_pipeline()
    before, out = params(pipe), pipe.generate([1, 2], seed=3).images
    pipe.load_adapter(adapters[1])
    assert any(not torch.equal(p, before[n]) for n, p in params(pipe).items())
    with pytest.raises(ConfigError, match="adapter is loaded"):  # never a base checkpoint with adapter weights
        pipe.save_pretrained(tmp_path / "ckpt")
    pipe.load_adapter(adapters[0])  # replaces the first
    pipe.unload_adapter()
    after = params(pipe)
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
    assert pipe.transformer.class_emb.weight.shape[0] == 6
    assert torch.equal(pipe.generate([1, 2], seed=3).images, out)


def test_per_call_adapter_and_context_manager(adapters):
    pipe = tiny_pipeline()
    base = pipe.generate([1, 1], seed=0).images
    with pipe.using_adapter(adapters[1]):
        tuned = pipe.generate([1, 1], seed=0).images
    assert not torch.equal(tuned, base)
    assert torch.equal(pipe.generate([1, 1], seed=0, adapter=adapters[1]).images, tuned)
    assert torch.equal(pipe.generate([1, 1], seed=0).images, base)
    pipe.load_adapter(adapters[0])  # a per-call adapter replaces the loaded one for that call only
    assert torch.equal(pipe.generate([1, 1], seed=0, adapter=adapters[1]).images, tuned)
    assert torch.equal(pipe.generate([6], seed=0).images, pipe.generate([6], seed=0, adapter=adapters[0]).images)
    pipe.unload_adapter()
    with pipe.using_adapter(adapters[1]):  # a per-call adapter inside a block gives the block's adapter back
        pipe.generate([1], seed=0, adapter=adapters[0])
        assert torch.equal(pipe.generate([1, 1], seed=0).images, tuned)
    assert torch.equal(pipe.generate([1, 1], seed=0).images, base)


def test_threads_with_different_adapters_each_get_their_own_subject(adapters):
    pipe = tiny_pipeline()
    choices = {"base": None, "new": adapters[0], "old": adapters[1]}
    labels = {"base": [1, 2], "new": [6, 1], "old": [1, 2]}
    want = {k: pipe.generate(labels[k], seed=7, adapter=a).images for k, a in choices.items()}
    got, errors = {}, []

    def work(key, rounds=4):
        try:
            for i in range(rounds):
                got[(key, i)] = pipe.generate(labels[key], seed=7, adapter=choices[key]).images
        except Exception as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in choices for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(torch.equal(img, want[key]) for (key, _), img in got.items())
    assert pipe.adapter is None and pipe.adapter_class_ids() == []


def test_adapter_for_another_base_model_is_refused(adapters):
    other = tiny_pipeline(seed=1)
    before = params(other)
    with pytest.raises(CheckpointError, match="another base model"):
        other.load_adapter(adapters[1])
    with pytest.raises(CheckpointError, match="another base model"):
        other.generate([1], seed=0, adapter=adapters[1])
    assert all(torch.equal(p, before[n]) for n, p in params(other).items())


def test_truncated_foreign_and_misfit_adapters_are_clear_errors(adapters, tmp_path):
    data = adapters[1].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_adapter(cut)
    with pytest.raises(CheckpointError, match="not found"):
        read_adapter(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not a var-engine adapter"):
        read_adapter(tmp_path / "plain.safetensors")
    pipe = tiny_pipeline()
    good = read_adapter(adapters[1])
    fp = good.meta["base_fingerprint"]
    cases = {
        "no such parameter": {"blocks.9.ffn.fc1.bias": torch.zeros(64)},
        "file \\(3,\\) vs model": {"blocks.0.ffn.fc1.bias": torch.zeros(3)},
        "low-rank pair": {"blocks.0.ffn.fc1.weight.lora_A": torch.zeros(2, 32)},
        "NaN": {"blocks.0.ffn.fc1.bias": torch.full((128,), float("nan"))},
    }
    for message, tensors in cases.items():
        bad = Adapter(tensors, {"base_fingerprint": fp, "class_id": 1, "class_rows": []})
        with pytest.raises(CheckpointError, match=message):
            pipe.load_adapter(bad)
    rows = Adapter({"class_emb.rows": torch.zeros(1, 32)}, {"base_fingerprint": fp, "class_id": 5, "class_rows": [5]})
    with pytest.raises(CheckpointError, match="null class"):
        pipe.load_adapter(rows)
    assert pipe.adapter is None
