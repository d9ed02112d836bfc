"""Serving engines, registered by name: what each one serves, how it is installed, how its worker is started.

Adding an engine is one `Engine` subclass registered with `@register_engine` (see `vllm_engine.py`,
`llamacpp_engine.py`, `hf_engine.py`); `BenchConfig.engine`'s choices, `layerdrop bench --engine` and the error
advice read `ENGINES`. An engine that runs outside this process (vLLM, llama.cpp) names the module its worker
imports and the worker script; `engines/served.py` runs the benchmark for all of them alike.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdrop_patch.errors import ConfigError

__all__ = ["Engine", "Served", "ENGINES", "register_engine", "get_engine", "engine_names", "cpu_ids"]


@dataclass(frozen=True)
class Served:
    """What an engine serves for one model: the export written for it and the facts a benchmark reports."""

    path: Path
    format: str  # the export format ("standard", "decilm", "gguf")
    kv_layers: int  # attention layers the engine keeps a KV cache for (placeholders included)
    kv_bytes_per_token: int  # KV-cache bytes one token of one sequence takes in the engine
    load: dict  # arguments of the worker's "load" request besides sizes


class Engine:
    """One serving engine. Subclasses set the class attributes and implement `serve` (and `worker_env`)."""

    name: str = ""
    module: str | None = None  # what the worker imports; None: runs in this process
    worker: str | None = None  # the script in engines/workers/
    python_env: str = ""  # environment variable naming the interpreter that has the engine
    install: str = ""  # how to install it, for error messages
    formats: tuple[str, ...] = ()  # export formats it serves, in order of preference

    def serve(self, model: Any, tokenizer: Any, directory: Path, *, gguf_type: str | None = None) -> Served:
        """Write what the engine will serve for `model` into `directory`."""
        raise NotImplementedError

    def threads(self, threads: int | None) -> int:
        """The thread count the engine will use: `threads`, or the engine's own default."""
        return threads or 1

    def worker_env(self, threads: int | None) -> dict[str, str]:
        """Environment of the worker process (thread counts and the engine's switches)."""
        return {}

    def load_request(self, served: Served, *, batch_size: int, max_len: int, threads: int | None) -> dict:
        """Arguments of the worker's "load" request for a workload of `batch_size` sequences of `max_len` tokens."""
        return {"path": str(served.path), **served.load}

    def compare(self, models: Any, tokenizer_or_vocab: Any, config: Any, *, engine_python: str | None = None,
                progress: bool = True) -> dict:
        """The benchmark of `evaluation.bench.compare_engine` in this engine (see `served.py`)."""
        from layerdrop_patch.evaluation.engines.served import compare_served

        return compare_served(self, models, tokenizer_or_vocab, config, engine_python=engine_python,
                              progress=progress)


ENGINES: dict[str, Engine] = {}


def register_engine(cls: type[Engine]) -> type[Engine]:
    ENGINES[cls.name] = cls()
    return cls


def _load_all() -> None:
    from layerdrop_patch.evaluation.engines import hf_engine, llamacpp_engine, vllm_engine  # noqa: F401


def engine_names() -> tuple[str, ...]:
    _load_all()
    return tuple(ENGINES)


def get_engine(name: str) -> Engine:
    _load_all()
    if name not in ENGINES:
        raise ConfigError(f"engine {name!r} is not one of {', '.join(ENGINES)}")
    return ENGINES[name]


def cpu_ids(threads: int) -> list[int]:
    """The first `threads` CPUs this process may run on (affinity respected, e.g. in a container)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    return allowed[:max(1, threads)]
