"""Speed, memory and KV-cache benchmarks through `generate()` with the KV cache, as a user would run them.

Why this way: layer dropping speeds up decoding mostly by shrinking the per-token work *and* the KV cache
the attention layers read, so timing must go through `generate()` with `use_cache=True` (a benchmark that
re-runs full forwards without the cache measures something no one deploys). Prefill and decode are
timed separately inside ONE `generate()` call: a logits processor records a timestamp after every forward,
so the first timestamp closes the prefill (time to first token) and the rest is decode.

What is reported (per model; medians over `repeats`, after `warmup` untimed runs):
- prefill_s, prefill_tok_s = batch·prompt_len / prefill_s
- decode_s (new_tokens−1 forward steps after the first token), decode_tok_s = batch·(new_tokens−1) / decode_s
- total_s, total_tok_s = batch·new_tokens / total_s (the paper's generation throughput)
- kv_cache_bytes: bytes of the key/value tensors in the returned cache (allocated storage, so a
  static cache reports its full `max_cache_len`), and kv_cache_layers
- memory: on CUDA, `torch.cuda.max_memory_allocated()` during generate (peak_memory_bytes, weights
  included) and its increase over the allocation before the call (peak_extra_bytes). On CPU there is no
  allocator high-water mark: peak_extra_bytes is the increase of the process RSS, sampled every 5 ms by a
  background thread with psutil — approximate (allocator caching hides reuse), and peak_memory_bytes is None.
Inputs are random token ids (speed does not depend on the values); `min_new_tokens = max_new_tokens` so
an EOS cannot end a run early.

Serving engines: `compare_engine` runs the same workload in the engine `BenchConfig.engine` names (registry:
`evaluation/engines/`): "transformers" is `compare_generate` below; "vllm" and "llama.cpp" serve each model's
export in a worker process (`engines/served.py`: same fields, prefill = a one-token request). Users prune to
serve faster, so the speed-up that counts is the one the engine they deploy delivers.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any, Mapping

import torch

from dataclasses import dataclass

from layerdrop_patch.errors import ConfigError
from layerdrop_patch.options import StageConfig, non_negative, option, positive
from layerdrop_patch.patch import kept_attention_layers, kv_cache_bytes, returned_cache

__all__ = ["BenchConfig", "benchmark_generate", "compare_engine", "compare_generate", "expected_kv_bytes",
           "kv_cache_bytes", "random_prompt"]


def _engine_names() -> tuple[str, ...]:
    from layerdrop_patch.evaluation.engines.registry import engine_names

    return engine_names()


def _gguf_types() -> tuple[str, ...]:
    from layerdrop_patch.export.gguf import GGUF_TYPES

    return tuple(GGUF_TYPES)


@dataclass
class BenchConfig(StageConfig):
    """The workload a speed measurement runs: the options of `layerdrop bench`."""

    section = "bench"
    batch_size: int = option(1, "Sequences per generate() call (requests in flight, for served engines).",
                             check=positive, flag=("--batch-size", "--batch"))
    prompt_len: int = option(64, "Prompt tokens (random ids).", check=positive)
    new_tokens: int = option(32, "Generated tokens.", check=positive)
    repeats: int = option(3, "Timed runs per model (median; interleaved across models).", check=positive)
    warmup: int = option(1, "Untimed runs per model first.", check=non_negative)
    cache_implementation: str = option("dynamic", "KV cache of generate(): dynamic | static.",
                                       choices=("dynamic", "static"))
    seed: int = option(0, "Seed of the random prompt ids.")
    engine: str = option("transformers", "What runs the models: transformers (generate() of the patched models, in "
                         "this process), vllm (their standard or DeciLM export), llama.cpp (their GGUF export).",
                         choices=_engine_names)
    threads: int | None = option(None, "CPU threads per model (transformers: torch threads; vllm: OpenMP threads "
                                 "bound to cores; llama.cpp: n_threads). Default: the engine's own.", check=positive)
    gguf_type: str | None = option(None, "llama.cpp: GGUF weight type (default: from --dtype: float32 -> f32, "
                                   "float16 -> f16, bfloat16 -> bf16).", choices=_gguf_types)
    engine_python: str | None = option(None, "vllm / llama.cpp: the Python that has the engine installed (default: "
                                       "$LAYERDROP_VLLM_PYTHON / $LAYERDROP_LLAMACPP_PYTHON, else this one).")

    def checks(self) -> list[str]:
        problems = []
        if self.engine != "transformers" and self.cache_implementation != "dynamic":
            problems.append(f"cache_implementation: {self.cache_implementation} is a transformers cache; "
                            f"{self.engine} manages its own KV cache (leave it at dynamic)")
        if self.gguf_type is not None and self.engine != "llama.cpp":
            problems.append(f"gguf_type: only llama.cpp serves GGUF files, not {self.engine} (use --engine llama.cpp)")
        return problems


def expected_kv_bytes(config: Any, batch_size: int, cached_tokens: int, dtype: torch.dtype) -> int:
    """KV bytes from shape arithmetic: kept_attn_layers × 2 (K and V) × batch × kv_heads × tokens × head_dim
    × element size. For a dynamic cache after `generate(new_tokens)`, cached_tokens = prompt_len +
    new_tokens − 1 (the last token is never fed back); for a static cache it is the cache's max_cache_len
    (which generate() also sizes to prompt_len + new_tokens − 1 in transformers 5.x)."""
    n_layers = len(kept_attention_layers(config))
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return n_layers * 2 * batch_size * kv_heads * cached_tokens * head_dim * torch.empty(0, dtype=dtype).element_size()


def _vocab_size(tokenizer_or_vocab: Any, model: Any) -> int:
    if isinstance(tokenizer_or_vocab, int):
        return tokenizer_or_vocab
    if tokenizer_or_vocab is not None:
        return min(len(tokenizer_or_vocab), model.config.vocab_size)
    return model.config.vocab_size


def random_prompt(vocab_size: int, batch_size: int, prompt_len: int, seed: int = 0) -> torch.Tensor:
    """Reproducible random token ids (values do not matter for speed)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, prompt_len), generator=gen)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepClock:
    """A logits processor that only timestamps: it is called once per forward step of generate()."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores):
        _sync(self.device)
        self.stamps.append(time.perf_counter())
        return scores


class _RssSampler:
    """Peak process RSS over a with-block, sampled every 5 ms (CPU memory is approximate by nature)."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.start = self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def _one_run(model, input_ids, new_tokens: int, cache_implementation: str, measure_memory: bool) -> dict[str, Any]:
    from transformers import LogitsProcessorList

    device = input_ids.device
    clock = _StepClock(device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  return_dict_in_generate=True, logits_processor=LogitsProcessorList([clock]),
                  attention_mask=torch.ones_like(input_ids), pad_token_id=model.config.eos_token_id
                  if isinstance(model.config.eos_token_id, int) else 0)
    if cache_implementation == "static":
        kwargs["cache_implementation"] = "static"
    mem: dict[str, Any] = {"peak_memory_bytes": None, "peak_extra_bytes": None}
    if device.type == "cuda" and measure_memory:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    _sync(device)
    start = time.perf_counter()
    if device.type != "cuda" and measure_memory:
        with _RssSampler() as rss, torch.inference_mode():
            out = model.generate(input_ids, **kwargs)
        mem["peak_extra_bytes"] = rss.peak - rss.start
    else:
        with torch.inference_mode():
            out = model.generate(input_ids, **kwargs)
    _sync(device)
    end = time.perf_counter()
    if device.type == "cuda" and measure_memory:
        mem["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
        mem["peak_extra_bytes"] = mem["peak_memory_bytes"] - before
    generated = out.sequences.shape[1] - input_ids.shape[1]
    if generated != new_tokens or len(clock.stamps) != new_tokens:
        raise RuntimeError(f"generate() produced {generated} tokens in {len(clock.stamps)} steps, expected "
                           f"{new_tokens}; the benchmark cannot time prefill and decode separately.")
    cache = returned_cache(out)
    return {"prefill_s": clock.stamps[0] - start, "decode_s": end - clock.stamps[0], "total_s": end - start,
            "kv_cache_bytes": kv_cache_bytes(cache), "kv_cache_layers": len(getattr(cache, "layers", [])), **mem}


def _summarise(runs: list[dict[str, Any]], batch_size: int, prompt_len: int, new_tokens: int) -> dict[str, Any]:
    med = {k: statistics.median(r[k] for r in runs) for k in ("prefill_s", "decode_s", "total_s")}
    decode_tokens = batch_size * (new_tokens - 1)
    peaks = [r["peak_memory_bytes"] for r in runs if r["peak_memory_bytes"] is not None]
    extras = [r["peak_extra_bytes"] for r in runs if r["peak_extra_bytes"] is not None]
    return {
        **med,
        "prefill_tok_s": batch_size * prompt_len / med["prefill_s"],
        "decode_tok_s": decode_tokens / med["decode_s"] if decode_tokens else None,
        "total_tok_s": batch_size * new_tokens / med["total_s"],
        "kv_cache_bytes": runs[-1]["kv_cache_bytes"],
        "kv_cache_layers": runs[-1]["kv_cache_layers"],
        "peak_memory_bytes": max(peaks) if peaks else None,
        "peak_extra_bytes": max(extras) if extras else None,
        "repeats": len(runs),
        "runs_total_s": [r["total_s"] for r in runs],
    }


def compare_generate(models: Mapping[str, Any], tokenizer_or_vocab: Any = None, config: BenchConfig | None = None, *,
                     measure_memory: bool = True, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Benchmark several models side by side in one process, repeats interleaved (A, B, A, B, ...) so that
    drift (thermal, other load) hits all of them alike; ratios are relative to the FIRST model.

    `config` / keyword overrides: a BenchConfig (batch_size, prompt_len, new_tokens, repeats, warmup,
    cache_implementation, seed). Returns {"settings": ..., "models": {name: summary}, "ratios": {name:
    {prefill/decode/total speed-up, kv_cache ratio}}}; see the module docstring for the fields.
    """
    c = BenchConfig.build(config, **overrides)
    if c.engine != "transformers":
        raise ConfigError(f"compare_generate times transformers' generate(); for engine {c.engine!r} call "
                          "compare_engine(models, tokenizer, config) instead.")
    if not models:
        raise ConfigError("compare_generate needs at least one model")
    first = next(iter(models.values()))
    ids = random_prompt(_vocab_size(tokenizer_or_vocab, first), c.batch_size, c.prompt_len, c.seed)
    runs: dict[str, list] = {name: [] for name in models}
    from tqdm.auto import tqdm

    steps = [(r, name) for r in range(c.warmup + c.repeats) for name in models]
    for r, name in tqdm(steps, desc="generate benchmark", disable=not progress):
        model = models[name]
        result = _one_run(model, ids.to(next(model.parameters()).device), c.new_tokens, c.cache_implementation,
                          measure_memory)
        if r >= c.warmup:
            runs[name].append(result)
    summaries = {name: _summarise(rs, c.batch_size, c.prompt_len, c.new_tokens) for name, rs in runs.items()}
    base = summaries[next(iter(models))]
    ratios = {}
    for name, s in summaries.items():
        ratios[name] = {
            "prefill_speedup": base["prefill_s"] / s["prefill_s"],
            "decode_speedup": base["decode_s"] / s["decode_s"],
            "total_speedup": base["total_s"] / s["total_s"],
            "kv_cache_ratio": s["kv_cache_bytes"] / base["kv_cache_bytes"] if base["kv_cache_bytes"] else None,
        }
    settings = {**c.to_dict(), "device": str(next(first.parameters()).device),
                "dtype": str(next(first.parameters()).dtype), "torch_threads": torch.get_num_threads()}
    return {"settings": settings, "models": summaries, "ratios": ratios}


def benchmark_generate(model: Any, tokenizer_or_vocab: Any = None, config: BenchConfig | None = None, *,
                       measure_memory: bool = True, **overrides: Any) -> dict[str, Any]:
    """Benchmark one model (see the module docstring); returns its summary dict plus "settings"."""
    out = compare_generate({"model": model}, tokenizer_or_vocab, config, measure_memory=measure_memory,
                           progress=False, **overrides)
    return {**out["models"]["model"], "settings": out["settings"]}


def compare_engine(models: Mapping[str, Any], tokenizer_or_vocab: Any = None, config: BenchConfig | None = None, *,
                   progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Prefill and decode throughput of several models side by side in the engine `config.engine` names, repeats
    interleaved; ratios are relative to the FIRST model (put the unpruned one first).

    transformers: `compare_generate` (without memory sampling). vllm / llama.cpp: each model is exported the way
    the engine serves it and run in a worker process (`engines/served.py`); the engine must be installed in
    `engine_python` (or `$LAYERDROP_VLLM_PYTHON` / `$LAYERDROP_LLAMACPP_PYTHON`, else this Python), or a
    MissingDependencyError says how. llama.cpp needs the tokenizer (it is embedded in the GGUF).
    Returns compare_generate's layout: {"settings", "models": {name: summary}, "ratios"}.
    """
    from layerdrop_patch.evaluation.engines.registry import get_engine

    c = BenchConfig.build(config, **overrides)
    return get_engine(c.engine).compare(models, tokenizer_or_vocab, c, progress=progress)
