import json
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

FIXTURES = Path(os.environ.get("VAR_ENGINE_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
REFERENCE = FIXTURES / "var_reference"
CONFIGS = ["tiny64_d2", "tiny64_d4_saln", "full256_d2"]


@pytest.fixture(autouse=True)
def allocator_calls(monkeypatch):
    """The loader's process-wide allocator setting, recorded instead of applied to the test process
    (tests/test_cpu_memory.py checks the real one in child processes)."""
    from var_engine import loading

    calls = []
    monkeypatch.setattr(loading, "keep_freed_cpu_memory", lambda: calls.append(1) or True)
    return calls


def reference_dir() -> Path:
    if not (REFERENCE / "vae.safetensors").is_file():
        pytest.skip(f"official reference fixtures not found at {REFERENCE} "
                    "(set VAR_ENGINE_FIXTURES to the folder holding var_reference/)")
    return REFERENCE


@pytest.fixture(scope="session")
def official():
    """name -> (pipeline, config dict, reference tensors), loaded once per session."""
    from safetensors.torch import load_file

    from var_engine import Pipeline

    root = reference_dir()
    cache = {}

    def get(name):
        if name not in cache:
            cfg = json.loads((root / name / "config.json").read_text())
            pipe = Pipeline.from_official(root / "vae.safetensors", root / name / "var.safetensors",
                                          patch_nums=cfg["patch_nums"], num_heads=cfg["var"]["num_heads"])
            cache[name] = (pipe, cfg, load_file(str(root / name / "reference.safetensors")))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_pipeline():
    """A randomly initialised small pipeline (no files needed)."""
    from var_engine import ModelConfig, Pipeline, TokenizerConfig, TransformerConfig
    from var_engine.tokenizer import Tokenizer
    from var_engine.transformer import VARTransformer

    torch.manual_seed(0)
    pn = (1, 2, 3, 4)
    tok = TokenizerConfig(vocab_size=64, z_channels=8, ch=16, ch_mult=(1, 2, 2), num_res_blocks=1,
                          norm_groups=8, patch_nums=pn)
    var = TransformerConfig(depth=4, embed_dim=32, num_heads=2, num_classes=5, vocab_size=64, z_channels=8,
                            patch_nums=pn)
    cfg = ModelConfig(tok, var)
    transformer = VARTransformer(var)  # default init: residual branches strong enough that every layer matters
    return Pipeline(Tokenizer(tok), transformer, cfg)
