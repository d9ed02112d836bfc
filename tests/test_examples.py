"""Every script in examples/ runs, as a newcomer would run it, on the embedded SmolLM2-135M."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ARGS = {
    "drop_and_generate.py": [],
    "score_select_save.py": ["--out", "{tmp}/saved"],
    "drop_at_load_time.py": ["--model", "smollm2-135m"],  # the Hub id is its default; CI has no Hub
    "export_for_engines.py": ["--out", "{tmp}/exports"],
    "recipe_from_python.py": ["--out", "{tmp}/run"],
    "plan_for_speed.py": ["--target", "1.05", "--prompt-len", "32", "--new-tokens", "8"],
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(ARGS)


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(ARGS))
def test_example_runs(name, tmp_path, smollm2):
    args = [a.format(tmp=tmp_path) for a in ARGS[name]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if name == "recipe_from_python.py":  # a rerun verifies and skips every finished step
        again = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                               env=env, cwd=tmp_path, timeout=900)
        assert again.returncode == 0 and again.stdout.count("already done") == 5, again.stdout[-2000:]
