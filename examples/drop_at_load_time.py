"""Drop sublayers while loading a model from the Hub: the dropped weights are never materialised.

    python examples/drop_at_load_time.py                                 # HuggingFaceTB/SmolLM2-135M (the Hub)
    python examples/drop_at_load_time.py --model smollm2-135m            # the embedded copy, offline
"""

import argparse

import torch

from layerdrop_patch import DropConfig, from_pretrained
from layerdrop_patch.patch import parameter_bytes

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M", help="hub id, local directory or embedded name")
args = parser.parse_args()

drop = DropConfig.blocks([26, 27], method="manual")  # two whole decoder layers
model = from_pretrained(args.model, drop_config=drop, dtype=torch.float32)
print(f"{args.model}: loaded with {drop.describe()} dropped; {parameter_bytes(model) / 2**20:.1f} MiB of weights")
assert not hasattr(model.model.layers[26], "self_attn") and not hasattr(model.model.layers[27], "mlp")
