"""llama.cpp in a worker process: `python llamacpp_worker.py`, in any Python that has `xllamacpp` (a prebuilt
llama.cpp server, pip-installable, no dependencies). See protocol.py for why a separate process: llama.cpp aborts
the process on a failed assertion (e.g. `GGML_ASSERT(tokenizer && "Tokenizer not initialized")`).

Ops: `load` (a GGUF file), `generate` (greedy token ids and their logprobs), `time` (wall seconds of one batched
completion request), `unload`. Prompts are token ids. Requests go through the server's own completion handler
(`Server.handle_completions`), the code path `llama-server` runs; a batch is one request with several prompts,
which the server spreads over `n_parallel` slots and decodes together. Prompt caching is off so that a
repeated prompt is computed again each time it is timed.
"""

from __future__ import annotations

import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from protocol import serve, timed  # noqa: E402  (a sibling file: this script runs outside the package)

STATE: dict = {"server": None}


def load(request: dict) -> dict:
    import xllamacpp

    STATE["server"] = None
    gc.collect()
    params = xllamacpp.CommonParams()
    params.model.path = request["path"]
    parallel = int(request.get("n_parallel", 1))
    params.n_parallel = parallel
    params.n_ctx = parallel * int(request["n_ctx"])
    params.n_batch = int(request.get("n_batch", 2048))
    params.n_ubatch = min(params.n_batch, 512)
    threads = int(request.get("threads", 1))
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.warmup = False
    params.cache_prompt = False
    STATE["server"] = xllamacpp.Server(params)
    devices = [str(d.get("name") if isinstance(d, dict) else d) for d in xllamacpp.get_device_info()]
    return {"version": f"xllamacpp {getattr(xllamacpp, '__version__', '?')}", "device": ", ".join(devices) or "cpu"}


def _complete(prompts: list, max_tokens: int, logprobs: bool) -> dict:
    request = {"prompt": [[int(t) for t in ids] for ids in prompts] if len(prompts) > 1 else
               [int(t) for t in prompts[0]], "n_predict": max_tokens, "temperature": 0.0, "top_k": 1,
               "ignore_eos": True, "cache_prompt": False, "seed": 0}
    if logprobs:
        request["logprobs"] = 1
    result = STATE["server"].handle_completions(request)
    if not isinstance(result, dict) or "choices" not in result:
        raise RuntimeError(f"llama.cpp answered {str(result)[:500]}")
    return result


def generate(request: dict) -> dict:
    tokens, logprobs = [], []
    for ids in request["prompts"]:  # one at a time: greedy decoding of a single sequence, as a user runs it
        choice = _complete([ids], request["max_tokens"], True)["choices"][0]
        steps = (choice.get("logprobs") or {}).get("content") or []
        tokens.append([int(step["id"]) for step in steps])
        logprobs.append([float(step["logprob"]) for step in steps])
    return {"tokens": tokens, "logprobs": logprobs}


def time_generate(request: dict) -> dict:
    result, seconds = timed(lambda: _complete(request["prompts"], request["max_tokens"], False))
    return {"seconds": seconds, "choices": len(result["choices"]), "timings": result.get("timings")}


def unload(request: dict) -> dict:
    STATE["server"] = None
    gc.collect()
    return {}


if __name__ == "__main__":
    serve({"load": load, "generate": generate, "time": time_generate, "unload": unload})
