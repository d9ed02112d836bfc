"""Export a pruned model for the engines people serve with: vLLM (Nemotron-NAS / DeciLM) and llama.cpp (GGUF).

    python examples/export_for_engines.py --out exports/
then, for example:
    python -c "from vllm import LLM; print(LLM('exports/decilm', trust_remote_code=True).generate('Hi'))"
    llama-server -m exports/model.gguf
"""

import argparse
from pathlib import Path

from layerdrop_patch import DropConfig, apply_drop, export, load_model

parser = argparse.ArgumentParser()
parser.add_argument("--model", default="smollm2-135m", help="hub id, local directory or embedded name")
parser.add_argument("--out", required=True, type=Path, help="directory for the exports (created)")
args = parser.parse_args()

model, tokenizer = load_model(args.model)
apply_drop(model, DropConfig(attn=[7, 25, 26, 28], mlp=[28]))
decilm = export(model, "decilm", args.out / "decilm", tokenizer=tokenizer)  # vLLM runs this natively
gguf = export(model, "gguf", args.out / "model.gguf", tokenizer=tokenizer, dtype="f16")  # llama.cpp / Ollama
print(f"wrote {decilm} (vLLM) and {gguf} ({gguf.stat().st_size / 2**20:.1f} MiB, llama.cpp)")
