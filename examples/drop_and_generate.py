"""Drop four attention sublayers from a model and generate with it: the KV cache shrinks with them.

    python examples/drop_and_generate.py                      # the embedded SmolLM2-135M
    python examples/drop_and_generate.py --model HuggingFaceTB/SmolLM2-135M-Instruct
"""

import argparse

import torch

from layerdrop_patch import DropConfig, apply_drop, load_model
from layerdrop_patch.patch import kv_cache_bytes, returned_cache

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m", help="hub id, local directory or embedded name")
args = parser.parse_args()

model, tokenizer = load_model(args.model)
inputs = tokenizer("The water cycle has three stages:", return_tensors="pt")
before = model.generate(**inputs, max_new_tokens=12, do_sample=False, return_dict_in_generate=True)

apply_drop(model, DropConfig(attn=[7, 25, 26, 28]))  # in place: those attention weights are freed
after = model.generate(**inputs, max_new_tokens=12, do_sample=False, return_dict_in_generate=True)

for name, out in (("intact", before), ("4 attention layers dropped", after)):
    cache = returned_cache(out)
    text = tokenizer.decode(out.sequences[0, inputs.input_ids.shape[1]:])
    print(f"{name:28s} KV layers {len(cache.layers):2d}, KV bytes {kv_cache_bytes(cache):>9,}: {text!r}")
assert len(returned_cache(after).layers) == model.config.num_hidden_layers - 4
assert torch.equal(after.sequences[:, : inputs.input_ids.shape[1]], inputs.input_ids)
