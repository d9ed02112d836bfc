"""Run Python code in a fresh interpreter where `layerdrop_patch` cannot be imported.

A saved checkpoint must load on machines without this package, through transformers' remote-code path
alone. The demo and the tests prove that by loading it in a subprocess whose import system refuses
`layerdrop_patch` (and whose `sys.path` no longer holds this checkout), whatever is installed. The script
prints one JSON line last; that line is returned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

__all__ = ["run_without_package"]

_REPO = str(Path(__file__).resolve().parents[1])

_PRELUDE = textwrap.dedent(
    """
    import sys
    sys.path = [p for p in sys.path if p not in ("", {repo!r})]

    class _BlockLayerdrop:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "layerdrop_patch":
                raise ImportError("layerdrop_patch is blocked in this process")

    sys.meta_path.insert(0, _BlockLayerdrop())
    try:
        import layerdrop_patch  # noqa: F401
        raise SystemExit("layerdrop_patch was importable despite the block")
    except ImportError:
        pass
    """
)


def run_without_package(script: str, cwd: str | os.PathLike, timeout: float = 900) -> dict:
    """Run `script` (Python source printing a JSON object as its last line) with `layerdrop_patch` blocked.

    The result also carries `"layerdrop_modules"`: every `layerdrop*` module the subprocess ended up
    importing (expected: none; transformers' remote-code modules are named after the checkpoint directory).
    """
    epilogue = '\nprint(json.dumps({"layerdrop_modules": sorted(m for m in sys.modules if m.startswith("layerdrop"))}))\n'
    source = _PRELUDE.format(repo=_REPO) + "import json\n" + textwrap.dedent(script) + epilogue
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, cwd=str(cwd),
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the script failed without layerdrop_patch:\n{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.strip().splitlines() if line.startswith("{")]
    if len(lines) < 2:
        raise RuntimeError(f"the script printed no JSON result:\n{proc.stdout[-2000:]}")
    return {**json.loads(lines[-2]), **json.loads(lines[-1])}
