"""Size of the wheel a clone builds, and what it carries (per top-level package and per shipped model file).

Usage: python -m bench.wheel   (builds with `pip wheel --no-deps` into a temporary folder)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from pathlib import Path

from bench.common import markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(out: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], check=True)
    wheels = sorted(out.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"expected one wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__).parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = build_wheel(Path(tmp))
        size = wheel.stat().st_size
        per_package: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        model_files = {}
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                top = info.filename.split("/")[0]
                per_package[top][0] += info.file_size
                per_package[top][1] += info.compress_size
                if info.filename.startswith("var_engine_checkpoints/default/"):
                    model_files[info.filename.rsplit("/", 1)[1]] = info.file_size
    rows = [{"package": k, "bytes": v[0], "compressed_bytes": v[1]} for k, v in sorted(per_package.items())]
    table = (f"wheel {wheel.name}: {size:,} bytes ({size / 1e6:.2f} MB)\n\n"
             + markdown_table(rows, ["package", "bytes", "compressed_bytes"]))
    write_results("wheel", {"wheel": wheel.name, "wheel_bytes": size, "rows": rows, "model_files": model_files},
                  table)


if __name__ == "__main__":
    main()
