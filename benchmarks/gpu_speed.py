"""GPU speed check against the paper: Llama-2-13B- and Mistral-7B-shaped models with RANDOM weights in bf16.

Speed does not depend on weight values, so no checkpoint is needed: each configuration is built from the
architecture's config on the GPU (weights drawn N(0, 0.02)), dropped with `apply_drop`, timed through
`generate()` with the KV cache (layerdrop_patch.bench), and freed before the next one. The baseline is timed in
the same process; speed-ups are total generation throughput ratios, as in the paper (2048 prompt + 2048 new
tokens by default). Paper reference speed-ups: Mistral-7B Attn-8 1.23x; Llama-2-13B Attn-8 1.13x,
Attn-20 1.40x. Dropped layers are the deepest k (for speed only the number matters).

Needs only torch, transformers and this repository (no lm-eval).

    python benchmarks/gpu_speed.py                                 # both models, Attn-4/8/16/20 + Block-8
    python benchmarks/gpu_speed.py --models mistral-7b --batch 16 --repeats 3
    python benchmarks/gpu_speed.py --prompt-len 512 --new-tokens 256   # a quicker pass
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from layerdrop_patch import DropConfig  # noqa: E402
from layerdrop_patch.evaluation.bench import compare_generate  # noqa: E402
from layerdrop_patch.patch import apply_drop  # noqa: E402

SHAPES = {
    "llama-2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                        max_position_embeddings=4096, rms_norm_eps=1e-5),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                       max_position_embeddings=32768, rms_norm_eps=1e-5, sliding_window=None),
}
PAPER = {("mistral-7b", "attn-8"): 1.23, ("llama-2-13b", "attn-8"): 1.13, ("llama-2-13b", "attn-20"): 1.40}


def build(shape: str, dtype: torch.dtype, device: str, drop: str | None):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(SHAPES[shape])
    config = AutoConfig.for_model(kw.pop("model_type"), **kw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    # buffers (rotary frequencies) are not parameters: rebuild the rotary module so they hold real values
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=config).to(device)
    model.eval()
    if drop:
        kind, n = drop.split("-")
        layers = list(range(config.num_hidden_layers - int(n), config.num_hidden_layers))
        cfg = DropConfig(attn=layers) if kind == "attn" else DropConfig.blocks(layers)
        apply_drop(model, cfg)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--drops", nargs="+", default=["attn-4", "attn-8", "attn-16", "attn-20", "block-8"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=2048)
    p.add_argument("--new-tokens", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--cache", choices=("dynamic", "static"), default="dynamic")
    p.add_argument("--out", default=str(ROOT / "results" / "gpu_speed.json"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py needs a CUDA GPU; use benchmarks/speed.py on CPU.")
    dtype, device = torch.bfloat16, "cuda"
    results = {"settings": vars(args) | {"gpu": torch.cuda.get_device_name(), "dtype": "bfloat16",
                                         "torch": torch.__version__}, "models": {}}
    for shape in args.models:
        rows = {}
        for drop in [None] + args.drops:
            name = drop or "baseline"
            t0 = time.time()
            model = build(shape, dtype, device, drop)
            out = compare_generate({name: model}, SHAPES[shape]["vocab_size"], batch_size=args.batch,
                                   prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                                   warmup=args.warmup, cache_implementation=args.cache, progress=False)
            rows[name] = out["models"][name]
            print(f"{shape} {name}: {rows[name]['total_tok_s']:.1f} tok/s, KV {rows[name]['kv_cache_bytes'] / 2**30:.2f} GiB, "
                  f"peak {(rows[name]['peak_memory_bytes'] or 0) / 2**30:.1f} GiB ({time.time() - t0:.0f}s)", flush=True)
            del model
            gc.collect()
            torch.cuda.empty_cache()
        base = rows["baseline"]
        for name, r in rows.items():
            r["total_speedup"] = base["total_s"] / r["total_s"]
            r["decode_speedup"] = base["decode_s"] / r["decode_s"]
            r["prefill_speedup"] = base["prefill_s"] / r["prefill_s"]
            r["kv_cache_ratio"] = r["kv_cache_bytes"] / base["kv_cache_bytes"]
            r["paper_speedup"] = PAPER.get((shape, name))
        results["models"][shape] = rows
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))

    print(f"\nbf16, batch {args.batch}, {args.prompt_len} in + {args.new_tokens} out, {args.cache} cache, "
          f"median of {args.repeats} (random weights)\n")
    print("| model | config | total tok/s | speed-up | decode speed-up | prefill speed-up | KV GiB | paper speed-up |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for shape, rows in results["models"].items():
        for name, r in rows.items():
            ref = f"{r['paper_speedup']:.2f}x" if r["paper_speedup"] else "–"
            print(f"| {shape} | {name} | {r['total_tok_s']:.1f} | {r['total_speedup']:.3f}x | {r['decode_speedup']:.3f}x | "
                  f"{r['prefill_speedup']:.3f}x | {r['kv_cache_bytes'] / 2**30:.2f} | {ref} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
