"""Bad input gets a clear, typed error."""
import math

import pytest
import torch

from var_engine import CheckpointError, ConfigError, InputError, Pipeline
from var_engine.checkpoints import read_state_dict


@pytest.mark.parametrize("labels, match", [
    ([5], "out of range"), ([-2], "out of range"), ([1.5], "not an integer"), (["cat"], "not an integer"),
    ([], "empty"), (torch.tensor([0.0]), "integers"), ([True], "not an integer"),
])
def test_bad_class_ids(tiny_pipeline, labels, match):
    with pytest.raises(InputError, match=match):
        tiny_pipeline.generate(labels, seed=0)


def test_null_class_is_accepted(tiny_pipeline):
    assert tiny_pipeline.parse_labels([-1, "null", 4]).tolist() == [5, 5, 4]


@pytest.mark.parametrize("kwargs, match", [
    (dict(cfg=math.nan), "cfg"), (dict(cfg=math.inf), "cfg"), (dict(cfg=-1.0), "cfg"),
    (dict(top_p=1.5), "top_p"), (dict(top_p=-0.1), "top_p"), (dict(top_p=math.nan), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(top_k=2.5), "top_k"), (dict(seed=-3), "seed"), (dict(draw="gumbel"), "draw"),
])
def test_bad_sampling_settings(tiny_pipeline, kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_pipeline.generate([0], **kwargs)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        read_state_dict(junk)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_state_dict(bad)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_hostile_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": _Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_state_dict(path)
    assert "must never run" not in capsys.readouterr().out


def test_non_state_dict_pickle(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "step": 3}, path)
    with pytest.raises(CheckpointError, match="not a plain state dict"):
        read_state_dict(path)
    path2 = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path2)
    with pytest.raises(CheckpointError, match="expected a state dict"):
        read_state_dict(path2)


def test_mismatched_checkpoint_shapes(official, tmp_path):
    from safetensors.torch import load_file, save_file

    from conftest import reference_dir

    root = reference_dir()
    sd = load_file(str(root / "tiny64_d2" / "var.safetensors"))
    sd["blocks.0.ffn.fc1.weight"] = torch.zeros(7, 128)
    save_file(sd, str(tmp_path / "var.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        Pipeline.from_official(root / "vae.safetensors", tmp_path / "var.safetensors", patch_nums=(1, 2, 3, 4))
    with pytest.raises(CheckpointError, match="token positions"):
        Pipeline.from_official(root / "vae.safetensors", root / "tiny64_d2" / "var.safetensors", patch_nums=(1, 2, 3))
    with pytest.raises(CheckpointError, match="heads"):
        Pipeline.from_official(root / "vae.safetensors", root / "tiny64_d2" / "var.safetensors",
                               patch_nums=(1, 2, 3, 4), num_heads=4)
    with pytest.raises(CheckpointError, match="not a VQVAE state dict"):  # files swapped
        Pipeline.from_official(root / "tiny64_d2" / "var.safetensors", root / "vae.safetensors", patch_nums=(1, 2, 3, 4))


def test_nan_weights_are_refused(official, tmp_path):
    from safetensors.torch import load_file, save_file

    from conftest import reference_dir

    root = reference_dir()
    sd = load_file(str(root / "tiny64_d2" / "var.safetensors"))
    sd["head.bias"][0] = float("nan")
    save_file(sd, str(tmp_path / "var.safetensors"))
    with pytest.raises(CheckpointError, match="NaN"):
        Pipeline.from_official(root / "vae.safetensors", tmp_path / "var.safetensors", patch_nums=(1, 2, 3, 4))


def test_hub_source_without_network_or_package_is_a_clear_error():
    with pytest.raises(CheckpointError, match="hf://"):
        read_state_dict("hf://FoundationVision/var/var_d16.pth")
    with pytest.raises(CheckpointError, match="hf://owner/repo/file"):
        read_state_dict("hf://just-a-name")


def test_config_validation():
    from var_engine import TokenizerConfig, TransformerConfig

    with pytest.raises(ConfigError, match="increasing"):
        TransformerConfig(patch_nums=(1, 3, 2))
    with pytest.raises(ConfigError, match="divisible"):
        TransformerConfig(depth=3, embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError, match="norm_groups"):
        TokenizerConfig(ch=20)
    with pytest.raises(ConfigError, match="unknown field"):
        TransformerConfig.from_dict({"depth": 2, "bogus": 1})
