"""LoRA recovery of an aggressive drop on the embedded SmolLM2-135M: WikiText-2 perplexity before/after.

Drops whole blocks (importance order, Block drop) from SmolLM2-135M, measures WikiText-2 perplexity (first
`--eval-tokens` tokens, 512-token windows) of the intact and the dropped model, runs `recover_lora` on the
bundled C4 sample for `--steps` steps (merged), and measures again. With `--awq` (needs GPTQModel) it also
quantises the recovered model (LoRA -> merge -> AWQ) and records that perplexity.

Run:
    python benchmarks/recovery.py                      # defaults (100 steps x 4 x 256): not timed yet
    python benchmarks/recovery.py --steps 16 --batch-size 1 --seq-len 256 --lr 1e-3 --eval-tokens 2048  # recorded run, ~7 min
    /tmp/awqenv/bin/python benchmarks/recovery.py --awq
    python benchmarks/recovery.py --tiny               # tiny random model, seconds
Writes benchmarks/results/recovery[_tiny].json (+ the loss curve PNG next to it) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random Llama instead of SmolLM2 (smoke run)")
    parser.add_argument("--blocks", type=int, default=6, help="decoder blocks to drop (of 30)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--awq", action="store_true", help="also AWQ-quantise the recovered model (GPTQModel)")
    args = parser.parse_args()

    import torch

    from layerdrop_patch.scoring.calibration import load_calibration
    from layerdrop_patch.patch import apply_drop
    from layerdrop_patch.evaluation.perplexity import quick_perplexity
    from layerdrop_patch.recover import recover_lora
    from layerdrop_patch.scoring import compute_importance

    if args.tiny:
        from layerdrop_patch.evaluation.toy import byte_tokenizer, tiny_llama

        tokenizer = byte_tokenizer()
        model = tiny_llama(num_layers=6, hidden_size=128)
        args.blocks, args.steps, args.seq_len, args.eval_tokens, args.lr = 2, 20, 64, 2048, 2e-3
        name = "tiny-random-llama"
    else:
        from layerdrop_patch.models import load_embedded_model

        model, tokenizer = load_embedded_model()
        name = "smollm2-135m"

    scores = compute_importance(model, load_calibration("c4", tokenizer, n_samples=8, seq_len=256, seed=1),
                                progress=False)
    from layerdrop_patch.selection import select

    drop_cfg = select(scores, "block", n=args.blocks)
    ppl_intact = quick_perplexity(model, tokenizer, args.eval_tokens)
    apply_drop(model, drop_cfg)

    out = Path(tempfile.mkdtemp(prefix="recovery-"))
    start = time.perf_counter()
    recovered, res = recover_lora(model, tokenizer, "c4", steps=args.steps, batch_size=args.batch_size,
                                  seq_len=args.seq_len, lr=args.lr, rank=args.rank, alpha=2 * args.rank,
                                  out_dir=out, eval_tokens=args.eval_tokens)
    report = {
        "model": name, "drop_config": drop_cfg.to_dict(), "drop": drop_cfg.describe(),
        "ppl_intact": ppl_intact, "ppl_dropped": res.ppl_before, "ppl_recovered": res.ppl_after,
        "steps": res.steps, "train_seconds": res.seconds, "total_seconds": time.perf_counter() - start,
        "trainable_params": res.trainable_params, "lora_targets": res.targets, "lora": res.config,
        "train_data": f"bundled c4, {args.steps * args.batch_size} x {args.seq_len} tokens",
        "eval": f"wikitext2 first {args.eval_tokens} tokens, 512-token windows",
        "loss_first5": sum(res.losses[:5]) / 5, "loss_last5": sum(res.losses[-5:]) / 5,
        "versions": {"torch": torch.__version__}, "threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.awq:
        from layerdrop_patch.quantize import quantize_awq

        _, q = quantize_awq(recovered, tokenizer, "c4", out / "awq", n_samples=64, eval_tokens=args.eval_tokens,
                            inplace=True)
        report.update(ppl_recovered_awq=q.ppl_after, awq_seconds=q.seconds, awq_checkpoint_bytes=q.checkpoint_bytes)

    suffix = "_tiny" if args.tiny else ""
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "loss.png", results / f"recovery_loss{suffix}.png")
    (results / f"recovery{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)

    print(f"\n{name}: dropped {drop_cfg.describe()}; LoRA r={args.rank}, {args.steps} steps x {args.batch_size} x "
          f"{args.seq_len} tokens, {res.seconds:.0f} s")
    print(f"{'model':28} {'WikiText-2 ppl':>15}")
    print(f"{'intact (fp32)':28} {ppl_intact:15.2f}")
    print(f"{'dropped':28} {res.ppl_before:15.2f}")
    print(f"{'dropped + LoRA (merged)':28} {res.ppl_after:15.2f}")
    if args.awq:
        print(f"{'dropped + LoRA + AWQ 4-bit':28} {report['ppl_recovered_awq']:15.2f}")
    print(f"wrote {results / f'recovery{suffix}.json'}")


if __name__ == "__main__":
    main()
