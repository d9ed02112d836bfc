"""A stand-in engine worker for the main suite: the real protocol loop, an engine that only pretends.

It "serves" a file whose content is a number of layers, takes `layers x 1 ms` per generated token plus
`layers x 0.1 ms` per prompt token, and appends every request to the file named by $FAKE_ENGINE_LOG, so tests
can check how the benchmark interleaves and times models without vLLM or llama.cpp. `crash` aborts the process
the way llama.cpp does on a failed assertion; `refuse` raises the way an engine refuses a model.
"""

import importlib.util
import json
import os
import time
from pathlib import Path

# the protocol file by path, as the real workers use it: a worker never imports this package (nor torch)
_spec = importlib.util.spec_from_file_location("protocol", Path(__file__).resolve().parents[2] / "layerdrop_patch"
                                               / "evaluation" / "engines" / "workers" / "protocol.py")
protocol = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(protocol)
serve = protocol.serve

STATE = {}


def _log(request):
    with open(os.environ["FAKE_ENGINE_LOG"], "a") as f:
        f.write(json.dumps({**request, "pid": os.getpid()}) + "\n")


def load(request):
    _log(request)
    STATE["layers"] = int(open(request["path"]).read())
    return {"version": "fake 1.0", "device": "nowhere"}


def time_generate(request):
    _log(request)
    prompt_tokens = sum(len(p) for p in request["prompts"])
    seconds = STATE["layers"] * (1e-4 * prompt_tokens + 1e-3 * request["max_tokens"])
    time.sleep(seconds)
    return {"seconds": seconds, "generated": [request["max_tokens"]] * len(request["prompts"])}


def crash(request):
    print("GGML_ASSERT(fake && \"the engine gave up\") failed", flush=True)  # goes to the log, not the answers
    os.abort()


def refuse(request):
    raise ValueError("this engine does not serve that model")


if __name__ == "__main__":
    serve({"load": load, "time": time_generate, "crash": crash, "refuse": refuse})
