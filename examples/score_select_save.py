"""Score every sublayer on calibration text, pick the most redundant attention layers, save a portable checkpoint,
and load it back.

    python examples/score_select_save.py --out smollm2-attn4
"""

import argparse

import torch

from layerdrop_patch import (CalibrationConfig, SelectionConfig, apply_drop, choose_drop, compute_importance,
                             from_pretrained, load_model, save_pretrained)

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m", help="hub id, local directory or embedded name")
parser.add_argument("--out", required=True, help="directory for the pruned checkpoint (must not exist yet)")
args = parser.parse_args()

model, tokenizer = load_model(args.model)
calibration = CalibrationConfig(source="c4", n_samples=8, seq_len=256).load(tokenizer)
scores = compute_importance(model, calibration)  # one pass; every metric, every layer
print(scores.table())

drop = choose_drop(SelectionConfig(kind="attn", n=4), scores=scores).drop_config
print("dropping", drop.describe())
apply_drop(model, drop)
save_pretrained(model, args.out, tokenizer=tokenizer)

reloaded = from_pretrained(args.out)  # no trust_remote_code needed with the package installed
ids = tokenizer("Paris is the capital of", return_tensors="pt").input_ids
with torch.no_grad():
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
print(f"saved and reloaded {args.out}: identical logits")
