"""What does the patch itself cost? Decode speed of patched vs. native transformers models, side by side.

Models compared in ONE run (repeats interleaved, so machine noise hits all alike):
  (a) vanilla transformers model
  (b) the same model patched with an empty DropConfig           target: (b)/(a) >= 0.99
  (c) Block-k (k whole layers dropped by the patch) vs.
  (c') a native transformers model built with L-k layers holding the same weights   target: within 2%
  (d) Attn-k (k attention sublayers dropped)
Prints a table and writes JSON to benchmarks/results/patch_overhead.json.

    python benchmarks/patch_overhead.py                      # SmolLM2-135M, CPU-sized defaults
    python benchmarks/patch_overhead.py --k 8 --new-tokens 128 --repeats 7
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from layerdrop_patch import DropConfig, apply_drop
from layerdrop_patch.evaluation.bench import compare_generate
from layerdrop_patch.models import load_model

RESULTS = Path(__file__).parent / "results"


def native_shallower_model(model, dropped_blocks: list[int]):
    """A stock transformers model with the dropped layers physically absent (layers renumbered)."""
    config = copy.deepcopy(model.config)
    kept = [i for i in range(config.num_hidden_layers) if i not in set(dropped_blocks)]
    config.num_hidden_layers = len(kept)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in kept]
    native = type(model)(config).to(model.dtype).eval()
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if len(parts) > 2 and parts[1] == "layers":
            layer = int(parts[2])
            if layer not in kept:
                continue
            parts[2] = str(kept.index(layer))
        state[".".join(parts)] = value
    native.load_state_dict(state, strict=True)
    return native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=8, help="layers dropped for Block-k and Attn-k")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--out", type=Path, default=RESULTS / "patch_overhead.json")
    args = parser.parse_args()

    model, tokenizer = load_model(args.model, dtype=getattr(torch, args.dtype))
    num_layers = model.config.num_hidden_layers
    blocks = list(range(num_layers - 1 - args.k, num_layers - 1))  # deep layers, keep the last (Tyukin et al.)
    models = {
        "vanilla": model,
        "patched-empty": apply_drop(copy.deepcopy(model), DropConfig()),
        f"native-{num_layers - args.k}-layers": native_shallower_model(model, blocks),
        f"block-{args.k}": apply_drop(copy.deepcopy(model), DropConfig.blocks(blocks)),
        f"attn-{args.k}": apply_drop(copy.deepcopy(model), DropConfig(attn=blocks)),
    }
    result = compare_generate(models, tokenizer, batch_size=args.batch_size, prompt_len=args.prompt_len,
                              new_tokens=args.new_tokens, repeats=args.repeats)
    native_name, block_name = f"native-{num_layers - args.k}-layers", f"block-{args.k}"
    checks = {
        "patched_empty_over_vanilla": result["models"]["patched-empty"]["decode_tok_s"]
        / result["models"]["vanilla"]["decode_tok_s"],
        "block_over_native": result["models"][block_name]["decode_tok_s"]
        / result["models"][native_name]["decode_tok_s"],
    }
    result.update(model=args.model, dropped_layers=blocks, checks=checks,
                  targets={"patched_empty_over_vanilla": ">= 0.99", "block_over_native": "0.98 .. 1.02"})

    print(f"\n{args.model}, batch {args.batch_size}, {args.prompt_len} in + {args.new_tokens} out, "
          f"{args.repeats} interleaved repeats, {args.dtype}, {torch.get_num_threads()} threads")
    print(f"{'model':<22}{'decode tok/s':>14}{'vs vanilla':>12}{'KV bytes':>14}")
    for name, summary in result["models"].items():
        print(f"{name:<22}{summary['decode_tok_s']:>14.1f}{result['ratios'][name]['decode_speedup']:>11.3f}x"
              f"{summary['kv_cache_bytes']:>14,}")
    print(f"\n(b)/(a) patched-empty / vanilla = {checks['patched_empty_over_vanilla']:.3f}  (target >= 0.99)")
    print(f"(c) block-{args.k} / native = {checks['block_over_native']:.3f}  (target within 2%)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
