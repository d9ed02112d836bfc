"""Compare AWQ 4-bit backends on the embedded SmolLM2-135M, intact and attention-dropped.

Records, per run: WikiText-2 perplexity before/after (first `--eval-tokens` tokens, 512-token windows),
quantisation time, checkpoint bytes, and where the checkpoint loads (this environment with GPTQModel; the
base interpreter, i.e. the project's main environment without the [awq] extra, in a subprocess). `autoawq` is recorded as the
refusal `quantize_awq` gives (see `layerdrop_patch/quantize.py` for the measurements behind it).

Run (GPTQModel lives in its own virtualenv because it pins numpy 2.2.6):
    /tmp/awqenv/bin/python benchmarks/quantize_backends.py            # issue 7 measured ~2 min per AWQ run on 2 idle cores; on a loaded machine far longer
    /tmp/awqenv/bin/python benchmarks/quantize_backends.py --tiny     # tiny random model, seconds
Writes benchmarks/results/quantize_backends[_tiny].json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_LOAD_CHECK = """
import sys
sys.path.insert(0, {root!r})
from layerdrop_patch.quantize import load_quantized
load_quantized({path!r})
print('LOADED')
"""


def _loads_without_gptqmodel(path: str) -> str:
    """Load in the base interpreter (the project's main environment, where the [awq] extra is not installed)."""
    base = getattr(sys, "_base_executable", sys.executable)
    code = _LOAD_CHECK.format(root=str(ROOT), path=path)
    proc = subprocess.run([base, "-c", code], capture_output=True, text=True, timeout=600)
    if "LOADED" in proc.stdout:
        return "yes"
    last = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return "no: " + (last[-1][:200] if last else f"exit {proc.returncode}")


def _load_and_generate(path: str, tokenizer) -> str:
    import torch

    from layerdrop_patch.quantize import load_quantized

    model = load_quantized(path)
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama instead of SmolLM2 (smoke run)")
    parser.add_argument("--n-samples", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=16384)
    parser.add_argument("--drop-attn", type=int, default=8, help="attention sublayers to drop (importance order)")
    parser.add_argument("--runs", default="dropped-sym,dropped-asym,intact-sym,intact-asym,autoawq",
                        help="comma-separated subset of dropped-sym, dropped-asym, intact-sym, intact-asym, autoawq")
    args = parser.parse_args()

    import torch

    from layerdrop_patch.scoring.calibration import load_calibration
    from layerdrop_patch.patch import apply_drop
    from layerdrop_patch.evaluation.perplexity import quick_perplexity
    from layerdrop_patch.quantize import QuantizationQualityError, quantize_awq

    if args.tiny:
        from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama

        tokenizer = byte_tokenizer()
        load = lambda: tiny_llama(num_layers=4, hidden_size=128)  # noqa: E731
        args.n_samples, args.seq_len, args.eval_tokens, args.drop_attn = 16, 128, 2048, 2
        name = "tiny-random-llama"
    else:
        from layerdrop_patch.models import load_embedded_model

        _, tokenizer = load_embedded_model()
        load = lambda: load_embedded_model()[0]  # noqa: E731
        name = "smollm2-135m"

    from layerdrop_patch.scoring import compute_importance

    base = load()
    calib = load_calibration("c4", tokenizer, n_samples=args.n_samples, seq_len=args.seq_len)
    scores = compute_importance(base, load_calibration("c4", tokenizer, n_samples=8, seq_len=256, seed=1),
                                progress=False)
    from layerdrop_patch.selection import select

    drop_cfg = select(scores, "attn", n=args.drop_attn)
    fp_ppl = {"intact": quick_perplexity(base, tokenizer, args.eval_tokens)}
    dropped = apply_drop(load(), drop_cfg)
    fp_ppl["dropped"] = quick_perplexity(dropped, tokenizer, args.eval_tokens)
    del base, dropped

    every = {"intact-sym": ("gptqmodel", "intact", True), "intact-asym": ("gptqmodel", "intact", False),
             "dropped-sym": ("gptqmodel", "dropped", True), "dropped-asym": ("gptqmodel", "dropped", False),
             "autoawq": ("autoawq", "intact", True)}
    runs = [every[r.strip()] for r in args.runs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend, which, sym in runs:
            model = load() if which == "intact" else apply_drop(load(), drop_cfg)
            out = os.path.join(tmp, f"{backend}-{which}-{'sym' if sym else 'asym'}")
            row = {"backend": backend, "model": which, "sym": sym, "fp32_ppl": fp_ppl[which]}
            start = time.perf_counter()
            try:
                _, res = quantize_awq(model, tokenizer, calib, out, backend=backend, sym=sym, inplace=True,
                                      eval_tokens=args.eval_tokens, max_ppl_ratio=10.0)
                row.update(awq_ppl=res.ppl_after, ppl_ratio=res.ppl_ratio, quantize_s=res.seconds,
                           checkpoint_bytes=res.checkpoint_bytes,
                           loads_with_gptqmodel="yes: " + repr(_load_and_generate(out, tokenizer)),
                           loads_without_gptqmodel=_loads_without_gptqmodel(out))
            except (NotImplementedError, ImportError, QuantizationQualityError) as err:
                row.update(error=f"{type(err).__name__}: {str(err)[:300]}", total_s=time.perf_counter() - start)
            rows.append(row)
            print(json.dumps(row), flush=True)
            del model

    fp_dir = os.path.join(tempfile.mkdtemp(), "fp32")
    load().save_pretrained(fp_dir)
    import gptqmodel
    import transformers

    from layerdrop_patch.files import directory_bytes

    report = {
        "model": name, "drop_config": drop_cfg.to_dict(), "fp32_checkpoint_bytes": directory_bytes(fp_dir),
        "calibration": f"c4 {args.n_samples} x {args.seq_len}", "eval": f"wikitext2 first {args.eval_tokens} tokens",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "gptqmodel": gptqmodel.__version__}, "threads": torch.get_num_threads(), "rows": rows,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out = ROOT / "benchmarks" / "results" / f"quantize_backends{'_tiny' if args.tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{name}: drop {drop_cfg.describe()}; fp32 checkpoint {report['fp32_checkpoint_bytes'] / 2**20:.1f} MiB")
    print(f"{'backend':10} {'model':8} {'sym':5} {'fp32 ppl':>9} {'AWQ ppl':>9} {'time s':>7} {'MiB':>6}  loads w/o gptqmodel")
    for r in rows:
        if "error" in r:
            print(f"{r['backend']:10} {r['model']:8} {str(r['sym']):5} {r['fp32_ppl']:9.2f}  refused: {r['error'][:90]}")
            continue
        print(f"{r['backend']:10} {r['model']:8} {str(r['sym']):5} {r['fp32_ppl']:9.2f} {r['awq_ppl']:9.2f} "
              f"{r['quantize_s']:7.1f} {r['checkpoint_bytes'] / 2**20:6.1f}  {r['loads_without_gptqmodel'][:60]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
