"""The client side of an engine worker: start `python <engine>_worker.py` in the Python that has the engine, send it
requests, turn its failures into `EngineError`s that say what happened.

Why: see `workers/protocol.py`. What the caller gets: a context manager (`with EngineWorker(engine) as w:`)
whose `call(op, **arguments)` returns the worker's answer, raises `EngineError` with the engine's own error and
the last lines of its log when the engine refuses something, and the same (with the exit status) when the
process dies, e.g. on a llama.cpp assertion. The engine's log goes to a temporary file, never to the caller's
terminal, unless `LAYERDROP_ENGINE_LOG=1`.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from layerdrop_patch.errors import EngineError, MissingDependencyError

__all__ = ["EngineWorker", "engine_python", "has_module", "WORKERS_DIR"]

WORKERS_DIR = Path(__file__).with_name("workers")
_LOG_TAIL = 2000
_ERROR_MARKS = ("GGML_ASSERT", "Error", "error:", "failed", "Traceback")


def has_module(python: str, module: str) -> bool:
    """Whether `python` can import `module` (found, not imported: importing vLLM takes ~15 s)."""
    if python == sys.executable:
        import importlib.util

        return importlib.util.find_spec(module) is not None
    try:
        return subprocess.run([python, "-c", f"import importlib.util, sys; sys.exit(importlib.util.find_spec("
                                             f"{module!r}) is None)"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def engine_python(engine: Any, python: str | None = None) -> str:
    """The interpreter that runs `engine`: `python` if given, else `$LAYERDROP_<ENGINE>_PYTHON`, else this one.
    Refuses (MissingDependencyError, with the install line) an interpreter that lacks the engine."""
    chosen = python or os.environ.get(engine.python_env) or sys.executable
    if not Path(chosen).exists():
        raise MissingDependencyError(f"{engine.name}: the interpreter {chosen!r} (from --engine-python or "
                                     f"${engine.python_env}) does not exist; point it at the python of the venv that "
                                     f"has {engine.module} installed.")
    if not has_module(chosen, engine.module):
        raise MissingDependencyError(
            f"{engine.name} is not installed in {chosen}: {engine.install}. Then pass --engine-python "
            f"/path/to/that/venv/bin/python (Python API: engine_python=...) or set ${engine.python_env}.")
    return chosen


class EngineWorker:
    """One engine in a worker process (see the module docstring)."""

    def __init__(self, engine: Any, python: str | None = None, *, threads: int | None = None,
                 start_timeout: float = 120.0):
        self.engine = engine
        self.python = engine_python(engine, python)
        self.threads = threads
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self._log = None
        self._buffer = b""

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "EngineWorker":
        verbose = os.environ.get("LAYERDROP_ENGINE_LOG") == "1"
        self._log = None if verbose else tempfile.NamedTemporaryFile(prefix=f"layerdrop-{self.engine.name}-",
                                                                     suffix=".log", delete=False)
        env = {**os.environ, **self.engine.worker_env(self.threads)}
        script = WORKERS_DIR / self.engine.worker  # an absolute `worker` path stays as it is
        self.process = subprocess.Popen([self.python, str(script)], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=None if verbose else self._log, env=env)
        return self

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            try:
                if process.poll() is None:
                    process.stdin.write(b'{"op": "exit"}\n')
                    process.stdin.flush()
                    process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
            for stream in (process.stdin, process.stdout):
                stream.close()
        if self._log is not None:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
            self._log = None

    def __enter__(self) -> "EngineWorker":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def log_tail(self) -> str:
        """The engine's error lines (assertions, exceptions), then the end of its log."""
        if self._log is None:
            return "(engine log printed above: LAYERDROP_ENGINE_LOG=1)"
        self._log.flush()
        data = Path(self._log.name).read_bytes()
        lines = data[-(1 << 20):].decode("utf-8", "replace").splitlines()
        errors = [line for line in lines if any(mark in line for mark in _ERROR_MARKS)][-8:]
        tail = data[-_LOG_TAIL:].decode("utf-8", "replace").strip()
        text = ("\n".join(errors) + "\n...\n" if errors else "") + tail
        return text.strip() or "(the engine printed nothing)"

    def _readline(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return None
                chunk = os.read(self.process.stdout.fileno(), 1 << 16)
                if not chunk:
                    return b""
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def call(self, op: str, timeout: float = 600.0, **arguments: Any) -> dict:
        """Send one request; the worker's answer (without "ok"), or EngineError."""
        if self.process is None:
            self.start()
        what = f"{self.engine.name} ({op})"
        try:
            self.process.stdin.write((json.dumps({"op": op, **arguments}) + "\n").encode())
            self.process.stdin.flush()
        except OSError:
            pass  # the process is gone; reported below with its exit status
        line = self._readline(timeout)
        if line is None:
            self.process.kill()
            raise EngineError(f"{what}: no answer within {timeout:.0f} s; the engine's last output:\n{self.log_tail()}")
        if not line:
            code = self.process.wait()
            raise EngineError(f"{what}: the engine process ended (exit status {code}) before it answered; its last "
                              f"output:\n{self.log_tail()}")
        answer = json.loads(line)
        if not answer.pop("ok", False):
            raise EngineError(f"{what} failed: {answer.get('error')}\nthe engine's last output:\n{self.log_tail()}")
        return answer
