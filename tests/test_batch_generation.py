"""Batch generation: deterministic per image, resumable after a kill, shardable with torchrun."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from var_engine.batch_generation import BatchSettings, generate_folder, pack_npz, plan_jobs
from var_engine.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


class FakeRank:
    """Stands in for a torchrun process (the real thing is tested below)."""

    def __init__(self, rank, world):
        self.rank, self.world_size, self.is_main = rank, world, rank == 0

    def barrier(self):
        pass


def pixels(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(Path(folder).glob("*.png"))}


def test_set_is_deterministic_resumable_and_packs(tiny_pipeline, tmp_path):
    s = BatchSettings(classes=[0, 3], per_class=3, seed=5, batch_size=2)
    counts = generate_folder(tiny_pipeline, tmp_path / "a", s, ctx=FakeRank(0, 1), progress=False)
    assert counts == {"made": 6, "total": 6}
    first = pixels(tmp_path / "a")
    assert len(first) == 6
    assert generate_folder(tiny_pipeline, tmp_path / "a", s, ctx=FakeRank(0, 1), progress=False)["made"] == 0
    for name in ("class0000_000001.png", "class0003_000002.png"):
        (tmp_path / "a" / name).unlink()
    (tmp_path / "a" / ".class0000_000001.png.123.tmp").write_bytes(b"half")  # as left by a kill
    assert generate_folder(tiny_pipeline, tmp_path / "a", s, ctx=FakeRank(0, 1), progress=False)["made"] == 2
    again = pixels(tmp_path / "a")
    assert again.keys() == first.keys() and all(np.array_equal(again[k], first[k]) for k in first)
    assert not list((tmp_path / "a").glob(".*.tmp"))
    npz = np.load(pack_npz(tmp_path / "a", s, tmp_path / "set.npz", 5))
    assert npz["arr_0"].shape == (6, 16, 16, 3) and npz["arr_0"].dtype == np.uint8
    assert npz["labels"].tolist() == [0, 0, 0, 3, 3, 3]


def test_shards_together_equal_the_single_process_set(tiny_pipeline, tmp_path):
    s = BatchSettings(classes=[1, 2], per_class=3, seed=1, batch_size=2)
    generate_folder(tiny_pipeline, tmp_path / "single", s, ctx=FakeRank(0, 1), progress=False)
    for rank in (0, 1):
        generate_folder(tiny_pipeline, tmp_path / "sharded", s, ctx=FakeRank(rank, 2), progress=False)
    a, b = pixels(tmp_path / "single"), pixels(tmp_path / "sharded")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_other_settings_in_the_same_folder_are_refused(tiny_pipeline, tmp_path):
    generate_folder(tiny_pipeline, tmp_path, BatchSettings([0], 1, seed=1, batch_size=1), ctx=FakeRank(0, 1),
                    progress=False)
    with pytest.raises(InputError, match="other settings"):
        generate_folder(tiny_pipeline, tmp_path, BatchSettings([0], 1, seed=2, batch_size=1), ctx=FakeRank(0, 1),
                        progress=False)


def test_job_seeds_are_stable_and_distinct():
    jobs = plan_jobs([0, 1], 50)
    seeds = {j.seed(0) for j in jobs}
    assert len(seeds) == 100 and jobs[7].seed(0) == plan_jobs([0], 50)[7].seed(0)


def _sample_cmd(outdir, extra=()):
    return [sys.executable, "-m", "var_engine.cli", "sample", "--classes", "0,1", "--per-class", "8",
            "--batch-size", "2", "--outdir", str(outdir), "--threads", "1", "--quiet", *extra]


@pytest.fixture
def default_model():
    from var_engine import default_checkpoint_dir

    if not (default_checkpoint_dir() / "config.json").is_file():
        pytest.skip("embedded default model not present")


def test_kill_9_mid_run_then_rerun_completes_the_same_set(default_model, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_sample_cmd(tmp_path / "ref"), env=env, check=True, timeout=300)
    proc = subprocess.Popen(_sample_cmd(tmp_path / "run"), env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "run").glob("*.png"))) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(list((tmp_path / "run").glob("*.png"))) < 16  # really interrupted
    subprocess.run(_sample_cmd(tmp_path / "run", ["--npz", str(tmp_path / "run.npz")]), env=env, check=True,
                   timeout=300)
    a, b = pixels(tmp_path / "ref"), pixels(tmp_path / "run")
    assert len(a) == 16 and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert np.load(tmp_path / "run.npz")["arr_0"].shape == (16, 32, 32, 3)


def test_torchrun_two_gloo_processes_equal_single_process(default_model, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    subprocess.run(_sample_cmd(tmp_path / "single"), env=env, check=True, timeout=300)
    cmd = _sample_cmd(tmp_path / "multi")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m"] + cmd[2:]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = pixels(tmp_path / "single"), pixels(tmp_path / "multi")
    assert len(a) == 16 and a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_fast_draw_sets_are_their_own(tiny_pipeline, tmp_path):
    fast = BatchSettings([0, 1], 2, seed=1, batch_size=2, draw="fast")
    generate_folder(tiny_pipeline, tmp_path / "fast", fast, ctx=FakeRank(0, 1), progress=False)
    generate_folder(tiny_pipeline, tmp_path / "release", BatchSettings([0, 1], 2, seed=1, batch_size=2),
                    ctx=FakeRank(0, 1), progress=False)
    a, b = pixels(tmp_path / "fast"), pixels(tmp_path / "release")
    assert a.keys() == b.keys() and not all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(InputError, match="draw"):  # a release run cannot complete a fast set
        generate_folder(tiny_pipeline, tmp_path / "fast", BatchSettings([0, 1], 2, seed=1, batch_size=2),
                        ctx=FakeRank(0, 1), progress=False)
