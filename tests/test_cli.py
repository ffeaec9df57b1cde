import pytest
from PIL import Image

from var_engine.cli import main


@pytest.fixture
def default_model():
    from var_engine import default_checkpoint_dir

    if not (default_checkpoint_dir() / "config.json").is_file():
        pytest.skip("embedded default model not present")


def test_generate_grid_and_folder(default_model, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["generate", "--class", "3", "--num", "4", "--seed", "0", "--cfg", "1.5", "-o", str(out), "--quiet"]) == 0
    assert Image.open(out).format == "PNG"
    assert main(["generate", "--class", "1", "--class", "2", "--num", "2", "--outdir", str(tmp_path / "d"), "--quiet"]) == 0
    assert len(list((tmp_path / "d").glob("*.png"))) == 4
    fast = tmp_path / "fast.png"
    assert main(["generate", "--class", "3", "--num", "4", "--seed", "0", "--draw", "fast", "-o", str(fast), "--quiet"]) == 0
    assert Image.open(fast).size == Image.open(out).size and fast.read_bytes() != out.read_bytes()


def test_model_commands_keep_freed_memory_unless_told_not_to(default_model, allocator_calls, capsys):
    assert main(["info"]) == 0 and len(allocator_calls) == 1
    assert main(["info", "--no-keep-freed-memory"]) == 0 and len(allocator_calls) == 1


def test_info(default_model, capsys):
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "KV / image" in text and "parameters" in text


def test_bad_class_is_a_message_not_a_traceback(default_model, tmp_path, capsys):
    assert main(["generate", "--class", "42", "-o", str(tmp_path / "x.png"), "--quiet"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_missing_checkpoint_message(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "not a var-engine checkpoint" in capsys.readouterr().err


def test_official_checkpoint_via_cli(tmp_path, capsys):
    from conftest import reference_dir

    root = reference_dir()
    args = ["--official-vae", str(root / "vae.safetensors"), "--official-var", str(root / "tiny64_d2" / "var.pth"),
            "--patch-nums", "1,2,3,4"]
    assert main(["info", *args]) == 0
    assert main(["generate", *args, "--class", "917", "--num", "2", "-o", str(tmp_path / "o.png"), "--quiet"]) == 0


@pytest.mark.parametrize("extra, message", [(["--distill", "0.5"], "needs --supernet"),
                                            (["--supernet", "--distill", "2"], "in \\[0, 1\\]"),
                                            (["--distill-teacher", "t"], "needs a distillation weight"),
                                            (["--supernet", "--schedule", "progressive:1,2"], "bad schedule")])
def test_bad_training_settings_are_messages(tmp_path, capsys, extra, message):
    import re

    assert main(["train", "--tokenizer", str(tmp_path / "missing"), "--out", str(tmp_path / "run"), *extra]) == 2
    assert re.search(message, capsys.readouterr().err)
