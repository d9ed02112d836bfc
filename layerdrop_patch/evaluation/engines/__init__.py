"""Serving engines for the speed benchmark and the engine tests: transformers (the patched model, in this process),
vLLM (standard or DeciLM export) and llama.cpp (GGUF export), each of the latter two in a worker process of the
Python that has it installed.

    from layerdrop_patch.evaluation.bench import compare_engine
    compare_engine({"base": base, "attn8": pruned}, tokenizer, engine="vllm", batch_size=16)

`registry.py` (the engines, `get_engine`), `served.py` (the benchmark in a served engine), `worker.py` (the
client of a worker process), `workers/` (the worker scripts: standard library plus the engine only).
"""

from layerdrop_patch.evaluation.engines.registry import ENGINES, Engine, Served, engine_names, get_engine

__all__ = ["ENGINES", "Engine", "Served", "engine_names", "get_engine"]
