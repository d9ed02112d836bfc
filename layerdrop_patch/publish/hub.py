"""Publish a pruned checkpoint on the Hugging Face Hub, with a model card generated from the checkpoint.

Why this is more than `model.push_to_hub`: a pruned checkpoint is only correct together with its
`drop_config`, its `modeling_layerdrop.py` and weights that match both, so we (1) write it through
`checkpoint.save_pretrained` (or check a directory written by it), (2) regenerate the card so it names the
repository it is pushed to, and (3) upload the folder through huggingface_hub's own `HfApi.create_repo` +
`upload_folder`. Nothing here speaks HTTP itself; everything network-facing is huggingface_hub's (LFS or Xet,
retries, auth), which is also what the tests exercise, with only its HTTP transport replaced.

Commits: without hf_xet, `upload_folder` makes exactly one commit. With hf_xet (huggingface_hub >= 1.x), its
pipeline commits in batches (256 files, or a batch older than 5 minutes while files are still being
registered), so a checkpoint normally lands in one commit but a huge sharded one could take several.

The user's checkpoint directory is never modified: it is mirrored into a temporary folder with hard links
(copies where links are impossible) and the card is written there, replacing -- not writing through -- links.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from layerdrop_patch.config import DropConfig
from layerdrop_patch.errors import CheckpointError, ConfigError, InputNotFoundError, LayerdropError
from layerdrop_patch.publish.model_card import GENERATED_MARKER, write_model_card

__all__ = ["push_to_hub", "validate_checkpoint_dir", "NotALayerdropCheckpointError"]

logger = logging.getLogger(__name__)
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class NotALayerdropCheckpointError(CheckpointError):
    """A directory that is not a complete pruned checkpoint written by layerdrop-patch."""


class MissingTokenError(LayerdropError, PermissionError):
    """No Hugging Face write token is configured."""


# ----------------------------------------------------------------------------------------- checks
def _resolve_token(token: str | None) -> str:
    from huggingface_hub import get_token

    token = token if token is not None else get_token()
    if not token:
        raise MissingTokenError(
            "No Hugging Face token found, and pushing needs one with write access. Log in with `hf auth login` "
            "(`huggingface-cli login` on huggingface_hub < 1.0), set the HF_TOKEN environment variable, or pass "
            "token='hf_...'. Create a token at https://huggingface.co/settings/tokens."
        )
    if not isinstance(token, str):
        raise ConfigError(f"token must be a string, got {type(token).__name__}")
    return token


def validate_checkpoint_dir(directory: str | os.PathLike) -> DropConfig:
    """Check that `directory` is a complete pruned checkpoint (config with drop_config, weights, remote code).

    Returns its DropConfig. Raises `NotALayerdropCheckpointError` saying what is missing and how to get it.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputNotFoundError(f"{directory} is not a directory; pass a pruned model or the directory "
                                "layerdrop_patch.checkpoint.save_pretrained wrote.")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise NotALayerdropCheckpointError(f"{directory} has no config.json: it is not a saved transformers model.")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise NotALayerdropCheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
    if not config.get("drop_config"):
        raise NotALayerdropCheckpointError(
            f"{config_path} has no drop_config: {directory} is not a layerdrop-patch checkpoint. Prune a model with "
            "apply_drop(model, DropConfig(...)) and save it with layerdrop_patch.checkpoint.save_pretrained, or "
            "push an unpruned model with transformers' own push_to_hub."
        )
    try:
        drop = DropConfig.from_dict(config["drop_config"])
        if config.get("num_hidden_layers"):
            drop.validate(int(config["num_hidden_layers"]))
    except (TypeError, ValueError) as exc:
        raise NotALayerdropCheckpointError(f"{config_path}: invalid drop_config: {exc}") from exc

    shards = sorted(p.name for p in directory.glob("*.safetensors"))
    if not shards:
        other = sorted(p.name for p in directory.glob("*.bin"))
        hint = f" (found {other}; re-save with safetensors)" if other else ""
        raise NotALayerdropCheckpointError(f"{directory} has no *.safetensors weights{hint}.")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        wanted = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(wanted - set(shards))
        if missing:
            raise NotALayerdropCheckpointError(f"{index} names shards that are missing: {missing}")
    for module in sorted({str(ref).split(".")[0].split("--")[-1] for ref in (config.get("auto_map") or {}).values()}):
        if not (directory / f"{module}.py").is_file():
            raise NotALayerdropCheckpointError(
                f"{directory} has no {module}.py, but config.json's auto_map points at it: without it the "
                "checkpoint cannot be loaded with trust_remote_code=True. Re-save with "
                "layerdrop_patch.checkpoint.save_pretrained."
            )
    return drop


# ----------------------------------------------------------------------------------------- staging
def _link_or_copy(src: str, dst: str) -> str:
    try:
        os.link(src, dst)
    except OSError:  # other filesystem, no permission, links unsupported
        shutil.copy2(src, dst)
    return dst


def _stage(model_or_dir: Any, staging: Path, tokenizer: Any) -> Path:
    """A private folder holding the checkpoint to upload; the caller's files are never modified."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        source = Path(model_or_dir)
        validate_checkpoint_dir(source)
        if tokenizer is not None:
            logger.warning("tokenizer= is ignored when pushing a directory; save it into the directory instead.")
        shutil.copytree(source, staging, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".git"))
        return staging
    if not (hasattr(model_or_dir, "save_pretrained") and hasattr(model_or_dir, "config")):
        raise ConfigError(f"push_to_hub takes a pruned model or a checkpoint directory, got {type(model_or_dir)}")
    if DropConfig.from_model(model_or_dir) is None:
        raise NotALayerdropCheckpointError(
            "this model has no drop_config: prune it with apply_drop(model, DropConfig(...)) first, or push an "
            "unpruned model with model.push_to_hub()."
        )
    from layerdrop_patch.checkpoint import save_pretrained

    save_pretrained(model_or_dir, staging, tokenizer=tokenizer)
    return staging


def _scores_plot(scores: Any, workdir: Path) -> Path | None:
    """A PNG for the card: a given PNG as is, or `plots.plot_importance` of ImportanceScores (object/dict/JSON)."""
    if scores is None:
        return None
    if isinstance(scores, (str, os.PathLike)):
        path = Path(scores)
        with open(path, "rb") as f:
            if f.read(8) == _PNG_MAGIC:
                return path
        scores = json.loads(path.read_text())
    from layerdrop_patch.scoring import ImportanceScores

    if isinstance(scores, dict):
        scores = ImportanceScores.from_dict(scores)
    if not isinstance(scores, ImportanceScores):
        raise ConfigError("scores must be ImportanceScores, their dict/JSON file, or a PNG image path; "
                        f"got {type(scores).__name__}")
    from layerdrop_patch.scoring.plots import plot_importance

    return plot_importance(scores, workdir / "scores.png")


def _refresh_card(folder: Path, repo_id: str, eval_results: Any, scores_plot: Path | None) -> None:
    readme = folder / "README.md"
    if readme.is_file() and GENERATED_MARKER not in readme.read_text(encoding="utf-8", errors="replace"):
        logger.warning("%s was written by hand; uploading it unchanged (eval_results/scores are not added). "
                       "Delete it to get a generated model card.", readme)
        return
    write_model_card(folder, eval_results=eval_results, scores_plot=scores_plot, repo_id=repo_id)


# ----------------------------------------------------------------------------------------- public
def push_to_hub(model_or_dir: Any, repo_id: str, *, tokenizer: Any = None, private: bool | None = None,
                token: str | None = None, revision: str | None = None, commit_message: str | None = None,
                eval_results: Any = None, scores: Any = None, create_pr: bool = False) -> str:
    """Upload a pruned checkpoint with a generated model card; returns the (last) commit's URL.

    Args:
        model_or_dir: a model pruned with `apply_drop` (saved through `checkpoint.save_pretrained` into a temp
            dir first) or a directory that function wrote.
        repo_id: `"owner/name"` (or `"name"` for your own namespace); created if it does not exist.
        tokenizer: saved with the model (model objects only).
        private: visibility when the repo is created (an existing repo keeps its visibility).
        token: a write token; defaults to the logged-in one (`hf auth login` / HF_TOKEN).
        revision: branch to commit to, created from the default branch if missing.
        commit_message: defaults to one describing the drop.
        eval_results: `{task: value}`, `{task: {metric: value}}` or an `EvalResult`, shown in the card.
        scores: ImportanceScores (or its dict / JSON path) to plot, or a ready PNG path, shown in the card.
        create_pr: open a pull request instead of committing to the branch (the PR URL is logged).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.utils import validate_repo_id

    validate_repo_id(repo_id)
    if create_pr and revision not in (None, "main"):
        raise ConfigError("create_pr=True opens a pull request against the default branch; do not pass revision.")
    token = _resolve_token(token)  # before any expensive save: fail fast when not logged in

    with tempfile.TemporaryDirectory(prefix="layerdrop-push-") as tmp:
        folder = _stage(model_or_dir, Path(tmp) / "checkpoint", tokenizer)
        drop = validate_checkpoint_dir(folder)
        _refresh_card(folder, repo_id, eval_results, _scores_plot(scores, Path(tmp)))

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision not in (None, "main"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload pruned checkpoint ({drop.describe()} removed)",
            create_pr=create_pr,
        )
    if getattr(info, "pr_url", None):
        logger.info("opened pull request %s", info.pr_url)
    return str(info.commit_url)
