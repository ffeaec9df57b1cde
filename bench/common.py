"""Shared benchmark helpers: result files, markdown tables, environment description, child processes."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from var_engine.devices import set_threads

RESULTS_ENV = "VAR_ENGINE_BENCH_RESULTS"


def results_dir() -> Path:
    """bench/results, or $VAR_ENGINE_BENCH_RESULTS (the smoke tests write elsewhere)."""
    return Path(os.environ.get(RESULTS_ENV) or Path(__file__).resolve().parent / "results")


def run_module_json(module: str, args: Sequence[str], timeout: float | None = None) -> Any:
    """Run `python -m module args...` in a fresh process from the repository root; parse its last stdout line
    as JSON. Raises RuntimeError with the end of its stderr when it fails."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"python -m {module} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(parser, argv=None):
    """Add --threads, parse, and apply the thread count (torch's choice when 0)."""
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's choice)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    return args


def environment() -> dict[str, Any]:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "machine": platform.machine()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], table: str, out_dir: Path | None = None) -> Path:
    """Write `<name>.json` and `<name>.md` (the table) and print the table."""
    out = Path(out_dir or results_dir())
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"environment": environment(), **payload}, indent=1))
    (out / f"{name}.md").write_text(table + "\n")
    print(table)
    return out / f"{name}.json"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_top_ops(fn: Callable[[], Any], device: torch.device, count: int = 12) -> list[dict[str, Any]]:
    """The profiler's most expensive ops of one call of `fn` (after a warm-up call), by self time on
    the device that ran them (CUDA kernels on a GPU, CPU otherwise), with their share of the total."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"

    def run() -> None:
        fn()
        sync(device)

    run()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        run()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = prof.key_averages()
    total = sum(getattr(e, key, 0) for e in events) or 1
    top = sorted(events, key=lambda e: getattr(e, key, 0), reverse=True)[:count]
    return [{"op": e.key, "calls": e.count, "self_ms": getattr(e, key, 0) / 1e3, "share": getattr(e, key, 0) / total}
            for e in top]


def profile_tables(profiles: dict[str, list[dict[str, Any]]], what: str) -> str:
    """Markdown for `profile_top_ops` results, one table per profiled shape."""
    return "".join(f"\n\nTop ops, {shape} ({what}):\n\n" + markdown_table(ops, ["op", "calls", "self_ms", "share"])
                   for shape, ops in profiles.items())
