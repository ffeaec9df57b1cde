"""Imports point down the module map, never up or sideways (no cycles)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "var_engine"

LEVELS = {
    "errors": 0, "cpu_memory": 0, "class_names": 1, "config": 1, "devices": 1, "attention": 1, "linear": 1, "images": 1, "distillation": 1,
    "tokenizer": 2, "cache": 2, "metrics": 2, "data": 2,
    "transformer": 3,
    "sampling": 4, "training": 4, "checkpoints": 4,
    "train_tokenizer": 5, "train_transformer": 5, "evaluator": 5,
    "variant": 6, "search": 6, "editing": 6, "finetune": 6,
    "pipeline": 7,
    "batch_generation": 8, "loading": 8,
    "cli_common": 9, "cli_train": 10, "cli_serve": 10, "cli_edit": 10, "cli_finetune": 10, "cli": 11,
}


def top_module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def internal_imports(path: Path):
    tree = ast.parse(path.read_text())
    pkg_parts = path.relative_to(PACKAGE).parent.parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = list(pkg_parts[: len(pkg_parts) - (node.level - 1)])
            target = base + (node.module.split(".") if node.module else [])
            if target:
                yield target[0]
            else:  # `from . import x`
                for alias in node.names:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("var_engine."):
            yield node.module.split(".")[1]


def test_every_module_has_a_level():
    mods = {top_module(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    assert mods - {"__init__"} <= set(LEVELS), mods - set(LEVELS)


def test_imports_point_down():
    bad = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue  # the public API re-exports
        me = top_module(path)
        for target in internal_imports(path):
            if target == me or target == "__version__":
                continue
            if target not in LEVELS or LEVELS[target] >= LEVELS[me]:
                bad.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert not bad, bad
