"""The benchmark in an engine that serves exports (vLLM, llama.cpp): the same workload, timings and result layout as
`evaluation.bench.compare_generate`, so that one table shows any engine.

How it measures, and why:
- Each model is exported the way the engine serves it (`Engine.serve`: standard / DeciLM for vLLM, GGUF for
  llama.cpp) and loaded in a worker process of its own; all stay loaded, and the timed runs are interleaved
  (A, B, A, B, ...) so that drift and other load hit every model alike. Ratios are relative to the FIRST model.
- One run is two batched requests of the same random prompts: one for a single new token (prefill and the first
  token: `prefill_s`, the time to first token) and one for `new_tokens` (`total_s`); `decode_s = total_s -
  prefill_s`. Engines batch and schedule in their own way; this split needs nothing from their internals.
  Prefix / prompt caching is off in the workers, so every run computes its prompt again.
- The worker times the engine call inside its own process: pipes and JSON are never measured.
- kv_cache_bytes is what the served model needs for the workload (batch x (prompt + new - 1) tokens x the bytes
  per token of the attention layers the engine caches, placeholders included), not the pool the engine reserves.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Mapping

from layerdrop_patch.errors import ConfigError, EngineError
from layerdrop_patch.evaluation.engines.registry import Engine
from layerdrop_patch.evaluation.engines.worker import EngineWorker

__all__ = ["compare_served", "speed_ratios"]


def speed_ratios(summaries: dict[str, dict]) -> dict[str, dict]:
    """Speed-ups and KV ratio of each model against the first (None where a time is zero or missing)."""
    base = next(iter(summaries.values()))

    def over(a: Any, b: Any) -> float | None:
        return a / b if a and b else None

    return {name: {"prefill_speedup": over(base["prefill_s"], s["prefill_s"]),
                   "decode_speedup": over(base["decode_s"], s["decode_s"]),
                   "total_speedup": over(base["total_s"], s["total_s"]),
                   "kv_cache_ratio": over(s["kv_cache_bytes"], base["kv_cache_bytes"])}
            for name, s in summaries.items()}


def _one_run(worker: EngineWorker, prompts: list, new_tokens: int, batch_size: int) -> dict[str, float]:
    def timed(max_tokens: int) -> float:
        answer = worker.call("time", prompts=prompts, max_tokens=max_tokens)
        generated = answer.get("generated")
        if generated is not None and list(generated) != [max_tokens] * batch_size:
            raise EngineError(f"{worker.engine.name} generated {generated} tokens, asked for {max_tokens} per "
                              f"sequence; the timing would not be comparable.")
        return answer["seconds"]

    first = timed(1)
    total = timed(new_tokens) if new_tokens > 1 else first
    return {"prefill_s": first, "decode_s": total - first, "total_s": total}


def compare_served(engine: Engine, models: Mapping[str, Any], tokenizer_or_vocab: Any, config: Any, *,
                   engine_python: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Benchmark `models` served by `engine` (see the module docstring); returns compare_generate's layout."""
    from tqdm.auto import tqdm

    from layerdrop_patch.evaluation.bench import _summarise, _vocab_size, random_prompt

    c = config
    if not models:
        raise ConfigError("the benchmark needs at least one model")
    tokenizer = None if isinstance(tokenizer_or_vocab, int) else tokenizer_or_vocab
    first = next(iter(models.values()))
    prompts = random_prompt(_vocab_size(tokenizer_or_vocab, first), c.batch_size, c.prompt_len, c.seed).tolist()
    max_len = c.prompt_len + c.new_tokens
    python = engine_python or c.engine_python
    runs: dict[str, list] = {name: [] for name in models}
    with tempfile.TemporaryDirectory(prefix="layerdrop-bench-") as tmp, contextlib.ExitStack() as stack:
        served = {name: engine.serve(model, tokenizer, Path(tmp) / f"model{i}", gguf_type=c.gguf_type)
                  for i, (name, model) in enumerate(models.items())}
        workers, versions, devices = {}, set(), set()
        for name, s in served.items():
            workers[name] = stack.enter_context(EngineWorker(engine, python, threads=c.threads))
            answer = workers[name].call("load", timeout=900, **engine.load_request(
                s, batch_size=c.batch_size, max_len=max_len, threads=c.threads))
            versions.add(answer.get("version"))
            devices.add(answer.get("device"))
        steps = [(r, name) for r in range(c.warmup + c.repeats) for name in models]
        for r, name in tqdm(steps, desc=f"{engine.name} benchmark", disable=not progress):
            result = _one_run(workers[name], prompts, c.new_tokens, c.batch_size)
            if r >= c.warmup:
                cached = c.batch_size * (c.prompt_len + c.new_tokens - 1)
                runs[name].append({**result, "kv_cache_bytes": served[name].kv_bytes_per_token * cached,
                                   "kv_cache_layers": served[name].kv_layers, "peak_memory_bytes": None,
                                   "peak_extra_bytes": None})
    summaries = {}
    for name, rs in runs.items():
        summaries[name] = {**_summarise(rs, c.batch_size, c.prompt_len, c.new_tokens), "format": served[name].format}
        if c.new_tokens == 1:
            summaries[name]["decode_tok_s"] = None
    first_served = next(iter(served.values())).load

    def joined(values: set) -> str | None:
        return ", ".join(sorted(map(str, values - {None}))) or None

    settings = {**c.to_dict(), "engine": engine.name, "engine_version": joined(versions),
                "threads": engine.threads(c.threads),
                "dtype": first_served.get("dtype") or first_served.get("gguf_type"),
                "device": joined(devices)}
    return {"settings": settings, "models": summaries, "ratios": speed_ratios(summaries)}
