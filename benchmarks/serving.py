"""Served speed-ups: the unpruned and each pruned model side by side in every serving engine the machine has.

The paper's protocol (He et al. 2024, speed): generation throughput of Mistral-7B / Llama-2-13B with k attention
layers (or blocks) dropped, 2048 prompt + 2048 new tokens, bf16, on a GPU. Speed does not depend on weight
values, so the GPU shapes are built with random weights (as in `gpu_speed.py`) and the deepest k layers are
dropped; `smollm2-135m` is the embedded real model, for CPUs. Each pruned model is compared with the unpruned one
in ONE `compare_engine` run (interleaved repeats; see layerdrop_patch/evaluation/engines/served.py), so the
ratio is what the engine delivers: vLLM serves the standard export (blocks) or the DeciLM export (attention
drops), llama.cpp the GGUF export, transformers the patched model itself.

Engines: every one of transformers, vllm, llama.cpp that is installed (vLLM and llama.cpp in the Python named by
--engine-python, else $LAYERDROP_VLLM_PYTHON / $LAYERDROP_LLAMACPP_PYTHON, else this one), or those named by --engines. Random-weight shapes use SmolLM2's
tokenizer (llama.cpp needs one in the file) and its vocabulary size.

    python benchmarks/serving.py                                    # GPU: mistral-7b, paper workload, bf16
    python benchmarks/serving.py --shape smollm2-135m --drops attn-8 --batch 16 --prompt-len 200 --new-tokens 64 \\
        --dtype float32 --threads 1 --repeats 3                      # CPU
Writes benchmarks/results/serving_<shape>_<engine>.json and prints one Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from layerdrop_patch import DropConfig  # noqa: E402
from layerdrop_patch.errors import MissingDependencyError  # noqa: E402
from layerdrop_patch.evaluation.bench import compare_engine  # noqa: E402
from layerdrop_patch.evaluation.engines.registry import engine_names, get_engine  # noqa: E402
from layerdrop_patch.evaluation.engines.worker import engine_python  # noqa: E402
from layerdrop_patch.files import atomic_write_json  # noqa: E402
from layerdrop_patch.models import load_model  # noqa: E402
from layerdrop_patch.patch import apply_drop  # noqa: E402

SHAPES = {
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768,
                       rms_norm_eps=1e-5, sliding_window=None),
    "llama-2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=4096,
                        rms_norm_eps=1e-5),
}
PAPER = {("mistral-7b", "attn-8"): 1.23, ("llama-2-13b", "attn-8"): 1.13, ("llama-2-13b", "attn-20"): 1.40}


def base_model(shape: str, dtype: torch.dtype, device: str):
    """(model, tokenizer): the embedded SmolLM2, or a random-weight model of a paper shape."""
    model, tokenizer = load_model("smollm2-135m", dtype=str(dtype).removeprefix("torch."))
    if shape == "smollm2-135m":
        return model.to(device), tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(SHAPES[shape])
    config = AutoConfig.for_model(kw.pop("model_type"), vocab_size=len(tokenizer), **kw)
    del model
    with torch.device("meta"):
        random = AutoModelForCausalLM.from_config(config, dtype=dtype)
    random = random.to_empty(device=device)
    with torch.no_grad():
        for p in random.parameters():
            p.normal_(0.0, 0.02)
    random.model.rotary_emb = type(random.model.rotary_emb)(config=config).to(device)  # real buffers
    return random.eval(), tokenizer


def dropped(model, drop: str):
    kind, n = drop.split("-")
    layers = list(range(model.config.num_hidden_layers - int(n), model.config.num_hidden_layers))
    return apply_drop(copy.deepcopy(model), DropConfig(attn=layers) if kind == "attn" else DropConfig.blocks(layers))


def available_engines(python: str | None) -> list[str]:
    found = []
    for name in engine_names():
        try:
            if name != "transformers":
                engine_python(get_engine(name), python)
            found.append(name)
        except MissingDependencyError as err:
            print(f"skipping {name}: {err}", flush=True)
    return found


def main(argv=None):
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="mistral-7b" if gpu else "smollm2-135m", choices=[*SHAPES, "smollm2-135m"])
    p.add_argument("--drops", nargs="+", default=["attn-8", "block-8"])
    p.add_argument("--engines", nargs="+", default=None, help="default: every installed engine")
    p.add_argument("--engine-python", default=None, help="the Python that has vLLM / xllamacpp (default: "
                   "$LAYERDROP_VLLM_PYTHON / $LAYERDROP_LLAMACPP_PYTHON, else this one)")
    p.add_argument("--batch", type=int, default=1 if gpu else 16)
    p.add_argument("--prompt-len", type=int, default=2048 if gpu else 200)
    p.add_argument("--new-tokens", type=int, default=2048 if gpu else 64)
    p.add_argument("--dtype", default="bfloat16" if gpu else "float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out-dir", default=str(ROOT / "results"))
    args = p.parse_args(argv)
    dtype, device = getattr(torch, args.dtype), "cuda" if gpu else "cpu"
    engines = args.engines or available_engines(args.engine_python)
    base, tokenizer = base_model(args.shape, dtype, device)
    rows = []
    for engine in engines:
        results = {}
        for drop in args.drops:
            pruned = dropped(base, drop)
            out = compare_engine({"baseline": base, drop: pruned}, tokenizer, engine=engine, batch_size=args.batch,
                                 prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                                 warmup=args.warmup, threads=args.threads,
                                 engine_python=None if engine == "transformers" else args.engine_python)
            results[drop] = out
            b, d, r = out["models"]["baseline"], out["models"][drop], out["ratios"][drop]
            rows.append((engine, drop, d.get("format", ""), b["prefill_tok_s"], d["prefill_tok_s"], b["decode_tok_s"],
                         d["decode_tok_s"], r["prefill_speedup"], r["decode_speedup"], r["kv_cache_ratio"],
                         PAPER.get((args.shape, drop))))
            print(f"{engine} {drop}: decode {b['decode_tok_s']:.1f} -> {d['decode_tok_s']:.1f} tok/s "
                  f"({r['decode_speedup']:.2f}x)", flush=True)
            del pruned
            gc.collect()
        atomic_write_json(Path(args.out_dir) / f"serving_{args.shape}_{engine}.json",
                          {"settings": {**vars(args), "device": device}, "runs": results})
    print(f"\n{args.shape}, {args.dtype}, batch {args.batch}, {args.prompt_len} in + {args.new_tokens} out, median of "
          f"{args.repeats}, each drop interleaved with the unpruned model in one run\n")
    print("| engine | drop | served as | prefill tok/s | decode tok/s | prefill speed-up | decode speed-up | KV ratio "
          "| paper |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for e, drop, fmt, bp, dp, bd, dd, ps, ds, kv, paper in rows:
        print(f"| {e} | {drop} | {fmt} | {bp:.0f} → {dp:.0f} | {bd:.1f} → {dd:.1f} | {ps:.2f}x | {ds:.2f}x "
              f"| {kv:.2f} | {f'{paper:.2f}x' if paper else '–'} |")


if __name__ == "__main__":
    main()
