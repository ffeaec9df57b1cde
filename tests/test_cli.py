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


# Every command, given flag values that parse but cannot work: one line on stderr, exit code 2, no traceback.
BAD_FLAGS = {
    "generate": [["--class", "42"], ["--cfg", "nan"], ["--top-p", "2"], ["--num", "0"], ["--depth", "0"],
                 ["--attention", "xformers"], ["--device", "nonsense"], ["--device", "cuda:7"], ["--threads", "-1"],
                 ["--precision", "fp16"], ["--runner", "cuda-graphs"], ["--checkpoint", "{tmp}/missing"],
                 ["--official-vae", "{tmp}/vae.pth"], ["--memory-budget", "1", "--depth", "2"],
                 ["--class", "1", "--num", "1", "-o", "/proc/no/such/dir/out.png"], ["--budget", "3"],
                 ["--search", "tts", "--budget", "0.1"], ["--search", "best_of_n", "--budget", "nan"],
                 ["--trace", "{tmp}/t.json"], ["--depth", "2", "--switch-scale", "2", "--finish-scale", "2"],
                 ["--finish-scale", "5"], ["--adapter", "{tmp}/missing.safetensors"]],
    "sample": [["--outdir", "{tmp}/s", "--classes", "3,99"], ["--outdir", "{tmp}/s", "--per-class", "0"],
               ["--outdir", "/proc/no/such/dir", "--per-class", "1", "--classes", "1"],
               ["--outdir", "{tmp}/s", "--device", "cuda"], ["--outdir", "{tmp}/s", "--budget", "2"],
               ["--outdir", "{tmp}/s", "--depth", "2", "--finish-scale", "9"]],
    "edit": [["--image", "{tmp}/missing.png", "--box", "0,0,4,4"], ["--image", "{tmp}", "--outpaint", "2"],
             ["--image", "{tmp}/a.png", "--num", "0"], ["--image", "{tmp}/a.png", "--feather", "-1", "--box", "0,0,4,4"],
             ["--image", "{tmp}/a.png", "--box", "0,0,4,4", "--outpaint", "2"], ["--image", "{tmp}/a.png"],
             ["--image", "{tmp}/a.png", "--box", "0,0,4,4", "--budget", "2"]],
    "info": [["--attention", "xformers"], ["{tmp}"], ["--threads", "-3"], ["--device", "gpu0"],
             ["--official-vae", "{tmp}/a.pth", "--official-var", "{tmp}/b.pth"]],
    "bench": [["no-such-benchmark"], ["memory", "--threads", "-1"]],
    "serve": [["--port", "70000"], ["--port", "0"], ["--max-images", "0"], ["--queue-size", "0"],
              ["--max-budget", "nan"], ["--checkpoint", "{tmp}/missing"], ["--device", "nonsense"]],
    "train-tokenizer": [["--out", "{tmp}/t", "--steps", "0"], ["--out", "{tmp}/t", "--device", "cuda"],
                        ["--out", "{tmp}/t", "--image-size", "30"], ["--out", "{tmp}/t", "--data", "{tmp}/none"],
                        ["--out", "/proc/no/such/run", "--steps", "1"]],
    "train": [["--tokenizer", "{tmp}/missing", "--out", "{tmp}/r"],
              ["--tokenizer", "{tmp}/missing", "--out", "{tmp}/r", "--supernet", "--schedule", "fixed:7"]],
    "train-evaluator": [["--out", "{tmp}/e", "--lr", "nan"], ["--out", "{tmp}/e", "--threads", "-2"],
                        ["--out", "{tmp}/e", "--data", "{tmp}/none"]],
    "finetune": [["--images", "{tmp}/none", "--new-class", "-o", "{tmp}/a.safetensors"],
                 ["--images", "{tmp}", "--new-class", "-o", "{tmp}/a.safetensors"],
                 ["--images", "{tmp}", "--class-id", "99", "-o", "{tmp}/a.safetensors"],
                 ["--images", "{tmp}", "-o", "{tmp}/a.safetensors"],
                 ["--images", "{tmp}", "--new-class", "-o", "{tmp}/a.txt"],
                 ["--images", "{tmp}", "--new-class", "--steps", "0", "-o", "{tmp}/a.safetensors"],
                 ["--images", "{tmp}", "--new-class", "--groups", "nope", "-o", "{tmp}/a.safetensors"],
                 ["--images", "{tmp}", "--new-class", "--scale-weights", "1,2", "-o", "{tmp}/a.safetensors"],
                 ["--images", "{tmp}", "--new-class", "-o", "/proc/no/such/dir/a.safetensors"]],
    "train-latent-reward": [["--tokenizer", "{tmp}/missing", "--out", "{tmp}/l"],
                            ["--tokenizer", "{tmp}/missing", "--out", "{tmp}/l", "--steps", "0"]],
}


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    return code, capsys.readouterr().err


def test_every_command_has_bad_flag_cases():
    from var_engine.cli_common import COMMANDS

    assert set(BAD_FLAGS) == set(COMMANDS)


@pytest.mark.parametrize("command, flags", [(c, f) for c, cases in BAD_FLAGS.items() for f in cases],
                         ids=lambda x: " ".join(x) if isinstance(x, list) else x)
def test_bad_flag_values_are_one_line_errors(command, flags, tmp_path, capsys, allocator_calls):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    if command == "generate" and "-o" not in flags:
        flags += ["-o", str(tmp_path / "out.png")]
    if command in ("generate", "sample"):
        flags += ["--quiet"]
    code, err = run_cli([command, *flags], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err and lines and lines[-1].startswith("error: "), err
    assert not any(p.name.startswith(".") and p.suffix == ".tmp" for p in tmp_path.rglob("*"))  # nothing half-written


def test_generate_with_search_writes_its_trace(default_model, tmp_path):
    import json

    trace = tmp_path / "trace.json"
    assert main(["generate", "--class", "3", "--class", "5", "--num", "1", "--search", "best_of_n", "--budget", "2",
                 "--trace", str(trace), "-o", str(tmp_path / "s.png"), "--quiet"]) == 0
    record = json.loads(trace.read_text())
    assert len(record) == 1 and record[0]["mode"] == "best_of_n" and record[0]["batches"] == [2] * 7
    assert record[0]["labels"] == [3, 5] and len(record[0]["winner_scores"]) == 2
    assert record[0]["compute"] == pytest.approx(4.0)
