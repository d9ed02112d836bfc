"""Run a whole recipe (score -> drop -> evaluate -> report) from Python, the way `layerdrop recipe run` does.

    python examples/recipe_from_python.py --out runs/example
"""

import argparse
import tempfile
from pathlib import Path

import yaml

from layerdrop_patch import run_recipe

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m", help="hub id, local directory or embedded name")
parser.add_argument("--out", required=True, help="output directory of the run (new, or an earlier run's)")
args = parser.parse_args()

recipe = {
    "model": args.model,
    "calibration": {"source": "c4", "n_samples": 8, "seq_len": 256},
    "drop": {"kind": "attn", "n": 4},
    "evaluate": {"tasks": [], "perplexity_tokens": 2048},  # perplexity only: quick
}
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "example.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = run_recipe(path, out=args.out)  # rerun it: finished steps are verified and skipped
print("final checkpoint:", Path(args.out) / summary["final_checkpoint"])
print({name: round(column["perplexity"]["value"], 2) for name, column in summary["eval"].items()})
