"""Benchmark importance scoring on the embedded SmolLM2-135M: scores, time overhead, peak memory.

What it measures, on the same calibration tokens (bundled C4, packed):
  * the scores themselves (all four metrics), saved as JSON next to plots of them;
  * wall time of `compute_importance` (streaming mode) against a plain forward of the decoder stack
    (`model.model`, which is what scoring runs) and of the full CausalLM (with the LM head), median of --repeats
    interleaved runs; the target is scoring <= 1.15 x the plain forward;
  * peak resident memory (VmHWM) of the normal mode (whole model loaded) and of the offloaded mode (model
    built on the meta device, weights read layer by layer from the safetensors checkpoint), each in a fresh
    subprocess, with the process's memory after imports reported alongside so the difference is visible;
  * that offloaded and streaming scores agree.

    python benchmarks/scoring.py [--n-samples 8 --seq-len 512 --batch-size 4 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def _rss_mib() -> float:
    """Peak resident memory of this process so far, MiB. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent across fork/exec, so a child would report the benchmark parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child(mode: str, ckpt: str, tokens: str, batch_size: int) -> None:
    """Run one scoring mode in a fresh process and print its peak memory as JSON."""
    from layerdrop_patch.scoring import compute_importance
    from layerdrop_patch.models import empty_model

    ids = torch.load(tokens)
    after_imports = _rss_mib()
    t0 = time.perf_counter()
    if mode == "normal":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
        scores = compute_importance(model, ids, batch_size=batch_size, progress=False)
    else:
        model = empty_model(ckpt, dtype=torch.float32)
        scores = compute_importance(model, ids, batch_size=batch_size, progress=False, offload=True, checkpoint=ckpt)
    print(json.dumps({"mode": mode, "peak_rss_mib": _rss_mib(), "rss_after_imports_mib": after_imports,
                      "seconds": time.perf_counter() - t0, "metrics": scores.metrics}))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-samples", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", choices=["normal", "offloaded"])
    p.add_argument("--ckpt")
    p.add_argument("--tokens")
    args = p.parse_args()
    if args.child:
        return child(args.child, args.ckpt, args.tokens, args.batch_size)

    from layerdrop_patch.scoring.calibration import load_calibration
    from layerdrop_patch.models import ensure_embedded, load_embedded_model
    from layerdrop_patch.scoring.plots import plot_importance
    from layerdrop_patch.selection.plots import plot_drop_order
    from layerdrop_patch.scoring import compute_importance

    model, tokenizer = load_embedded_model()
    ckpt = ensure_embedded()
    calib = load_calibration("c4", tokenizer, n_samples=args.n_samples, seq_len=args.seq_len, seed=0)
    ids = calib.input_ids
    batches = list(ids.split(args.batch_size))
    print(calib.description)

    @torch.no_grad()
    def plain_base():
        for b in batches:
            model.model(input_ids=b, use_cache=False)

    @torch.no_grad()
    def plain_full():
        for b in batches:
            model(input_ids=b, use_cache=False)

    def scoring():
        return compute_importance(model, calib, batch_size=args.batch_size, progress=False)

    scoring(), plain_base()  # warm-up
    times = {"forward_decoder": [], "forward_full_lm": [], "scoring": []}
    for _ in range(args.repeats):
        times["forward_decoder"].append(_timed(plain_base))
        times["scoring"].append(_timed(scoring))
        times["forward_full_lm"].append(_timed(plain_full))
    med = {k: statistics.median(v) for k, v in times.items()}
    scores = scoring()

    memory = {}
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = Path(tmp) / "ids.pt"
        torch.save(ids, tok_path)
        for mode in ("normal", "offloaded"):
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--ckpt", str(ckpt), "--tokens",
                                  str(tok_path), "--batch-size", str(args.batch_size)],
                                 capture_output=True, text=True, check=True)
            memory[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    agree = max(abs(a - b) for m in scores.metrics for k in scores.metrics[m]
                for a, b in zip(memory["normal"]["metrics"][m][k], memory["offloaded"]["metrics"][m][k]))

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "scoring_smollm2-135m"
    scores.save(RESULTS / f"{stem}_scores.json")
    plot_importance(scores, RESULTS / f"{stem}_importance.png", title="SmolLM2-135M-Instruct: per-layer importance")
    plot_drop_order(scores, RESULTS / f"{stem}_drop_order_joint.png", kind="joint", max_dropped=30)
    report = {
        "model": "SmolLM2-135M-Instruct (embedded, fp32; dequantised from the Q4_1 GGUF)",
        "calibration": calib.description,
        "batch_size": args.batch_size,
        "device": f"CPU ({platform.processor() or platform.machine()}), torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "seconds_median": med,
        "seconds_all": times,
        "scoring_over_forward_decoder": med["scoring"] / med["forward_decoder"],
        "scoring_over_forward_full_lm": med["scoring"] / med["forward_full_lm"],
        "peak_rss_mib": {m: round(v["peak_rss_mib"], 1) for m, v in memory.items()},
        "rss_after_imports_mib": {m: round(v["rss_after_imports_mib"], 1) for m, v in memory.items()},
        "seconds_in_subprocess": {m: round(v["seconds"], 2) for m, v in memory.items()},
        "max_abs_diff_normal_vs_offloaded": agree,
        "scores_file": f"{stem}_scores.json",
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")

    print(f"\n{'':28}{'seconds (median)':>18}")
    for k, v in med.items():
        print(f"{k:28}{v:>18.3f}")
    print(f"scoring / decoder forward   {report['scoring_over_forward_decoder']:>18.3f}  (target <= 1.15)")
    print(f"scoring / full-LM forward   {report['scoring_over_forward_full_lm']:>18.3f}")
    print(f"\n{'mode':12}{'peak RSS MiB':>14}{'after imports':>15}{'seconds':>10}")
    for m, v in memory.items():
        print(f"{m:12}{v['peak_rss_mib']:>14.1f}{v['rss_after_imports_mib']:>15.1f}{v['seconds']:>10.2f}")
    print(f"max |normal - offloaded| over all scores: {agree:.2e}\n")
    print(scores.table())
    print(f"\nwrote {RESULTS / (stem + '.json')}")


if __name__ == "__main__":
    main()
