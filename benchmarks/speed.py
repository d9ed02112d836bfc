"""Generation speed of dropped models vs. the unpruned one, side by side in one run.

Prefill and decode are timed separately through `generate()` WITH the KV cache (see layerdrop_patch.bench),
median of --repeats after --warmup, repeats interleaved across models. Prints a Markdown table and writes JSON
to benchmarks/results/.

    python benchmarks/speed.py                                   # SmolLM2-135M, CPU-sized defaults
    python benchmarks/speed.py --drops attn-4 attn-8 block-4 --batch 4 --prompt-len 256 --new-tokens 128
    python benchmarks/speed.py --paper --batch 8                 # paper protocol (2048 in + 2048 out), GPU
    python benchmarks/speed.py --model tiny --repeats 1          # seconds-long smoke run

Which layers are dropped: by importance if --scores names an ImportanceScores JSON for this model (default:
benchmarks/results/scoring_smollm2-135m_scores.json when benchmarking SmolLM2), else the deepest k
("reverse"); for speed only the *number* of dropped sublayers matters.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from layerdrop_patch.evaluation.bench import compare_generate  # noqa: E402
from layerdrop_patch.patch import apply_drop  # noqa: E402

DEFAULT_SCORES = ROOT / "results" / "scoring_smollm2-135m_scores.json"


def parse_drop(spec: str) -> tuple[str, int]:
    kind, _, n = spec.partition("-")
    if kind not in ("attn", "mlp", "block", "joint") or not n.isdigit():
        raise SystemExit(f"--drops entries look like attn-4, mlp-2, block-4, joint-8; got {spec!r}")
    return kind, int(n)


def drop_config_for(kind: str, n: int, scores, num_layers: int):
    from layerdrop_patch.selection import select

    if scores is not None:
        return select(scores, kind, n=n)
    return select(num_layers, kind, n=n, method="reverse")


def load(model_name: str, dtype: torch.dtype, device: str):
    if model_name == "tiny":
        from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama

        return tiny_llama(num_layers=8, hidden_size=128, dtype=dtype).to(device), byte_tokenizer()
    from layerdrop_patch.models import load_model

    model, tok = load_model(model_name, dtype=dtype)
    return model.to(device).eval(), tok


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="embedded name, hub id, local dir, or 'tiny'")
    p.add_argument("--drops", nargs="+", default=["attn-4", "attn-8", "mlp-4", "block-4", "joint-8"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic")
    p.add_argument("--paper", action="store_true", help="paper protocol: 2048 prompt + 2048 new tokens (GPU)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="default: float32 on CPU, bfloat16 on GPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--scores", default=None, help="ImportanceScores JSON used to pick the layers")
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/speed_<model>_<device>.json)")
    args = p.parse_args(argv)
    if args.paper:
        args.prompt_len, args.new_tokens = 2048, 2048
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))

    base, tok = load(args.model, dtype, args.device)
    num_layers = base.config.num_hidden_layers
    scores_path = args.scores or (str(DEFAULT_SCORES) if "smollm2-135m" in args.model and DEFAULT_SCORES.exists() else None)
    scores = None
    if scores_path:
        from layerdrop_patch.scoring import ImportanceScores

        scores = ImportanceScores.load(scores_path)
    models, configs = {"baseline": base}, {}
    for spec in args.drops:
        kind, n = parse_drop(spec)
        cfg = drop_config_for(kind, n, scores, num_layers)
        models[spec] = apply_drop(copy.deepcopy(base), cfg)
        configs[spec] = cfg.to_dict()

    started = time.time()
    out = compare_generate(models, tok, batch_size=args.batch, prompt_len=args.prompt_len,
                           new_tokens=args.new_tokens, repeats=args.repeats, warmup=args.warmup,
                           cache_implementation=args.cache)
    out["settings"].update(model=args.model, layer_choice=f"importance ({scores_path})" if scores else "reverse (deepest k)",
                           host=platform.node(), cpu=platform.processor() or platform.machine(),
                           gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                           wall_s=round(time.time() - started, 1),
                           load_avg_1m=os.getloadavg()[0], cpu_count=os.cpu_count())
    out["drop_configs"] = {k: {"attn": v["attn"], "mlp": v["mlp"]} for k, v in configs.items()}

    print(f"\n{args.model} on {args.device} ({dtype}), batch {args.batch}, {args.prompt_len} in + "
          f"{args.new_tokens} out, {args.cache} cache, median of {args.repeats}\n")
    print("| model | prefill tok/s | decode tok/s | total tok/s | speed-up (total) | speed-up (decode) | KV cache MiB | KV ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, s in out["models"].items():
        r = out["ratios"][name]
        print(f"| {name} | {s['prefill_tok_s']:.1f} | {s['decode_tok_s'] or 0:.1f} | {s['total_tok_s']:.1f} | "
              f"{r['total_speedup']:.3f}x | {r['decode_speedup']:.3f}x | {s['kv_cache_bytes'] / 2**20:.2f} | "
              f"{r['kv_cache_ratio']:.3f} |")
    dest = Path(args.out or ROOT / "results" / f"speed_{Path(args.model).name}_{args.device.split(':')[0]}.json")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(f"\nwrote {dest}")
    return out


if __name__ == "__main__":
    main()
