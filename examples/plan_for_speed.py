"""Plan the drop that makes a model 1.1x faster on YOUR workload, then check it by measurement.

    python examples/plan_for_speed.py --target 1.1 --prompt-len 128 --new-tokens 32
"""

import argparse

from layerdrop_patch import CalibrationConfig, SelectionConfig, compute_importance, load_model
from layerdrop_patch.evaluation import BenchConfig
from layerdrop_patch.planning import PlanConfig, plan_drop

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m", help="hub id, local directory or embedded name")
parser.add_argument("--target", type=float, default=1.1, help="speed-up to reach")
parser.add_argument("--prompt-len", type=int, default=128)
parser.add_argument("--new-tokens", type=int, default=32)
args = parser.parse_args()

model, tokenizer = load_model(args.model)
scores = compute_importance(model, CalibrationConfig(n_samples=8, seq_len=256).load(tokenizer))
workload = BenchConfig(batch_size=1, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=3)
plan = plan_drop(model, tokenizer, SelectionConfig(kind="joint", target_speedup=args.target), workload,
                 PlanConfig(), scores=scores, model_name=args.model)
print(f"drop attention {plan.drop_config['attn']} and MLP {plan.drop_config['mlp']}: predicted "
      f"x{plan.predicted_speedup:.3f}, measured x{plan.measured_speedup:.3f} ({plan.prediction_error:+.1%} error), "
      f"KV cache kept {plan.kv_kept:.0%}")
