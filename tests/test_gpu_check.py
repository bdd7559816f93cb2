"""scripts/gpu_check.sh on a CPU with the tiny model: one summary file, every step recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["env", "setup", "tests", "lossless", "device_map", "bench", "engine", "train"]


def _run(tmp_path, *args, **env):
    full = {**os.environ, "PYTHON": sys.executable, "EAGLE2_CACHE": str(tmp_path / "cache"),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WHEELS": str(tmp_path / "no-wheels"),
            "STAGE": str(tmp_path / "no-stage"), **env}
    full.pop("OUT", None)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out),
                           "--work", str(tmp_path / "work"), *args],
                          cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    return proc, out, summary


@pytest.mark.slow  # about 40 s on one core
def test_tiny_cpu_check_passes_every_step(tmp_path):
    proc, out, s = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert s["ok"] is True and s["failed"] == [] and s["device"] == "cpu" and s["tiny"] is True
    steps = {st["name"]: st for st in s["steps"]}
    assert list(steps) == STEPS
    for name, st in steps.items():
        assert st["status"] == ("skipped" if name == "device_map" else "passed"), (name, st.get("tail"))
        assert st["seconds"] >= 0
    assert steps["device_map"]["note"] == "one device"  # a CPU: the multi-GPU check is recorded, not run
    f = {name: st["figures"] for name, st in steps.items()}
    assert f["setup"]["model_kind"] == "tiny"
    assert f["tests"]["passed"] > 0 and not f["tests"].get("failed")
    assert f["lossless"]["identical"] is True and f["lossless"]["answers"] > 0
    assert set(f["bench"]["methods"]) == {"hf", "eagle2", "eagle2@lookup=10"}
    assert f["engine"]["policies"]["eagle2-paper"]["mean_tree_size"] == 60
    assert f["engine"]["non_forward_ms_per_cycle_paper_tree"] >= 0
    assert all(p["identical_to_vanilla"] for p in f["engine"]["policies"].values())
    assert f["train"]["val"] is not None
    # only a few files come back from a device run: the summary, the log, two step summaries
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "engine_bench.json", "gpu_check.log", "summary.json"]


def test_a_failing_step_is_recorded_and_the_rest_still_run(tmp_path):
    proc, out, s = _run(tmp_path, "--skip", "lossless,bench,engine,train", TESTS="tests/no_such_test_file.py")
    assert proc.returncode == 1
    assert s["ok"] is False and s["failed"] == ["tests"]
    steps = {st["name"]: st for st in s["steps"]}
    assert list(steps) == STEPS
    assert steps["env"]["status"] == "passed" and steps["setup"]["status"] == "passed"
    assert steps["tests"]["status"] == "failed" and steps["tests"]["rc"] != 0
    assert "no_such_test_file" in steps["tests"]["tail"]
    assert all(steps[n]["status"] == "skipped" for n in ("lossless", "device_map", "bench", "engine", "train"))


@pytest.mark.parametrize("env, word", [({"MODE": "resume"}, "MODE"), ({"LAYERS": "two"}, "LAYERS")])
def test_gpu_train_refuses_bad_settings_in_one_line(tmp_path, env, word):
    full = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), **env}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and word in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was made or run
