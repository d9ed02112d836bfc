"""llama.cpp: serves the GGUF export (`llama` architecture for complete layers, `deci` for per-layer structure),
through `xllamacpp`, a prebuilt llama.cpp server wheel (`pip install xllamacpp`, no dependencies).

The GGUF weight type is `gguf_type` (f32, f16, bf16, q8_0), by default the model's own dtype (float32 ->
f32, float16 -> f16, bfloat16 -> bf16). llama.cpp keeps its KV cache in f16 whatever the weights are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layerdrop_patch.evaluation.engines.registry import Engine, Served, cpu_ids, register_engine
from layerdrop_patch.evaluation.engines.vllm_engine import dtype_name, kv_bytes_per_token

__all__ = ["LlamaCppEngine", "gguf_type_for"]

_FROM_DTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def gguf_type_for(model: Any, gguf_type: str | None) -> str:
    return gguf_type or _FROM_DTYPE.get(dtype_name(model), "f32")


@register_engine
class LlamaCppEngine(Engine):
    name = "llama.cpp"
    module = "xllamacpp"
    worker = "llamacpp_worker.py"
    python_env = "LAYERDROP_LLAMACPP_PYTHON"
    install = "pip install xllamacpp (a prebuilt llama.cpp server, 34 MB, no dependencies)"
    formats = ("gguf",)

    def serve(self, model: Any, tokenizer: Any, directory: Path, *, gguf_type: str | None = None) -> Served:
        from layerdrop_patch.export import export
        from layerdrop_patch.export.gguf import gguf_layer_plan

        kind = gguf_type_for(model, gguf_type)
        path = export(model, "gguf", directory / f"model-{kind}.gguf", tokenizer, dtype=kind)
        kv_layers = sum(layer.kv for layer in gguf_layer_plan(model))
        return Served(path, "gguf", kv_layers, kv_bytes_per_token(model.config, kv_layers, 2), {"gguf_type": kind})

    def threads(self, threads: int | None) -> int:
        """llama.cpp's own default: every core."""
        return threads or len(cpu_ids(1 << 16))

    def worker_env(self, threads: int | None) -> dict[str, str]:
        # GGML_NO_BACKTRACE: on an abort ggml would attach gdb and bury its assertion under a backtrace
        return {"OMP_NUM_THREADS": str(self.threads(threads)), "GGML_NO_BACKTRACE": "1"}

    def load_request(self, served: Served, *, batch_size: int, max_len: int, threads: int | None) -> dict:
        per_slot = -(-max_len // 256) * 256  # llama.cpp rounds context sizes; keep every slot a whole multiple
        return {"path": str(served.path), "n_ctx": per_slot, "n_parallel": max(batch_size, 1),
                "threads": self.threads(threads)}
