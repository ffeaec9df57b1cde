"""What a wheel or plain `pip install .` carries: every subpackage and the embedded default model.

CI (.ci/run) also builds the wheel, installs it into a fresh virtual environment and generates from an
empty folder; these checks catch the same mistakes in seconds.
"""
import fnmatch
import importlib.util
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_listed():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "var_engine").rglob("__init__.py")}
    listed = set(SETUPTOOLS["packages"])
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"


def test_top_level_names_are_project_specific():
    assert {p.split(".")[0] for p in SETUPTOOLS["packages"]} == {"var_engine", "var_engine_checkpoints",
                                                                  "var_engine_serve"}
    assert SETUPTOOLS["package-dir"] == {"var_engine_checkpoints": "checkpoints", "var_engine_serve": "serve"}


def test_package_data_carries_every_file_the_default_model_loads():
    patterns = SETUPTOOLS["package-data"]["var_engine_checkpoints"]
    default = ROOT / "checkpoints" / "default"
    needed = ["config.json", "evaluator.json", "tokenizer.safetensors", "transformer.safetensors",
              "evaluator.safetensors", "latent_reward.json", "latent_reward.safetensors"]
    for name in needed:
        assert (default / name).is_file(), name
        assert any(fnmatch.fnmatch(f"default/{name}", p) for p in patterns), f"{name} is not in package-data"


def test_default_model_resolves_through_the_installed_package(monkeypatch):
    from var_engine import Pipeline, default_checkpoint_dir

    monkeypatch.delenv("VAR_ENGINE_CHECKPOINT", raising=False)
    spec = importlib.util.find_spec("var_engine_checkpoints")
    assert spec is not None, "var_engine_checkpoints is not importable: reinstall with pip install -e ."
    assert default_checkpoint_dir() == Path(spec.submodule_search_locations[0]) / "default"
    pipe = Pipeline.from_pretrained()
    assert pipe.meta["path"] == str(default_checkpoint_dir()) and "evaluator" in pipe.components


def test_package_data_carries_the_class_names():
    from var_engine.class_names import IMAGENET_FILE, imagenet_class_names

    assert IMAGENET_FILE in SETUPTOOLS["package-data"]["var_engine"]
    names = imagenet_class_names()
    assert len(names) == 1000 and names[0].startswith("tench") and names[207] == "golden retriever"


def test_serve_package_resolves_and_loads_gradio_lazily():
    import subprocess
    import sys

    spec = importlib.util.find_spec("var_engine_serve")
    assert spec is not None, "var_engine_serve is not importable: reinstall with pip install -e ."
    assert Path(spec.submodule_search_locations[0]).resolve() == ROOT / "serve"
    code = "import sys, var_engine.cli, var_engine_serve; print('gradio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
