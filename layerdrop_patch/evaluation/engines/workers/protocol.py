"""The worker side of the engine protocol: a loop that answers JSON requests, one per line.

Why a worker process, and why this file imports nothing but the standard library: vLLM needs transformers < 5.20
and so lives in a venv of its own (the CI stage, or a user's serving venv), where this package may not even be
installed; llama.cpp aborts the whole process on a failed assertion (a GGUF without a tokenizer does that at the
first prompt). Running each engine in its own Python keeps both facts away from the caller: the client
(`worker.py`) starts `python vllm_worker.py` or `python llamacpp_worker.py` in any interpreter that has the engine,
and an abort there becomes an `EngineError` here with the engine's last log lines.

Protocol: the client writes one JSON object per line to stdin, `{"op": NAME, ...arguments}`; the worker answers
each with one line, `{"ok": true, ...result}` or `{"ok": false, "error": "...", "traceback": "..."}`. Engines
print their logs to stdout as well, so the worker keeps a private copy of the real stdout for answers and points
file descriptor 1 at stderr before the engine is imported.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any, Callable

Handler = Callable[[dict], dict]


def serve(handlers: dict[str, Handler]) -> None:
    """Answer requests from stdin until EOF or `{"op": "exit"}`; engine output never reaches the answer stream."""
    answers = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if request.get("op") == "exit":
                answers.write(json.dumps({"ok": True}) + "\n")
                break
            handler = handlers.get(request.get("op"))
            if handler is None:
                raise ValueError(f"unknown op {request.get('op')!r}; known: {sorted(handlers)}")
            answer: dict[str, Any] = {"ok": True, **handler(request)}
        except Exception as err:  # reported to the client, which raises EngineError with it
            answer = {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
    answers.flush()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), wall seconds): the worker times inside its own process, so pipe latency is never measured."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start
