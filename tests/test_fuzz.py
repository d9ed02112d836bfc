"""Property-based hostile input (hypothesis): whatever a user or a tampered file feeds in, the outcome is a result or
a `LayerdropError` whose message is bounded; never another exception type, never a partial output that looks
whole, never a user's file touched.

Fed: drop_config dicts as found in config.json (through DropConfig, the shipped config class and the loader),
recipe YAML, calibration sources, and `layerdrop drop` command lines. Runs are derandomized, so CI sees the same
examples every time.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from layerdrop_patch import DropConfig, LayerdropError, apply_drop
from layerdrop_patch.checkpoint import from_pretrained, save_pretrained
from layerdrop_patch.cli import app
from layerdrop_patch.errors import MAX_MESSAGE
from layerdrop_patch.evaluation.toy import byte_tokenizer
from layerdrop_patch.modeling.configuration_layerdrop import DROP_CONFIG_KEYS, SHIPPED_CONFIGS
from layerdrop_patch.run.recipe import load_recipe
from layerdrop_patch.scoring import load_calibration
from tests.conftest import tiny_model
from tests.tiny_checkpoint import save_tiny

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                         st.text(max_size=20))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                                 st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)
index_lists = st.one_of(st.lists(st.integers(-3, 9), max_size=6), json_values)
drop_dicts = st.fixed_dictionaries(
    {"format_version": st.one_of(st.just(1), json_scalars)},
    optional={"attn": index_lists, "mlp": index_lists, "method": json_values, "metric": json_values,
              "scores": json_values, "calibration": json_values, "base_model": json_values,
              "library_version": json_values, "extra": json_values})


def _bounded(err: BaseException) -> None:
    assert isinstance(err, LayerdropError), f"{type(err).__name__}: {err}"
    assert 0 < len(str(err)) <= MAX_MESSAGE


@FUZZ
@given(data=drop_dicts, num_layers=st.integers(1, 8))
def test_drop_config_dicts_load_or_raise_a_bounded_layerdrop_error(data, num_layers):
    try:
        cfg = DropConfig.from_dict(data).validate(num_layers)
    except Exception as err:  # noqa: BLE001 - the property is about which exceptions escape
        _bounded(err)
        return
    assert set(cfg.attn) <= set(range(num_layers)) and len(set(cfg.attn)) == len(cfg.attn)
    assert set(data) <= set(DROP_CONFIG_KEYS)


@FUZZ
@given(data=drop_dicts)
def test_the_shipped_config_applies_the_same_rules(data):
    """Without the package (remote code), a bad drop_config is refused too, and exactly the same ones."""
    from transformers import LlamaConfig

    try:
        DropConfig.from_dict(data).validate(4)
        library_ok = True
    except LayerdropError:
        library_ok = False
    try:
        SHIPPED_CONFIGS[LlamaConfig](num_hidden_layers=4, drop_config=data)
        shipped_ok = True
    except (ValueError, TypeError):
        shipped_ok = False
    assert library_ok == shipped_ok


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-ckpt")
    save_pretrained(apply_drop(tiny_model("llama", 4), DropConfig(attn=[1])), root / "ckpt")
    return root / "ckpt"


@FUZZ
@given(data=drop_dicts)
def test_a_tampered_config_json_loads_or_is_refused_by_name(saved, tmp_path_factory, data):
    work = tmp_path_factory.mktemp("tampered")
    shutil.copytree(saved, work / "ckpt")
    path = work / "ckpt" / "config.json"
    config = json.loads(path.read_text())
    config["drop_config"] = data
    config.pop("per_layer_config", None)
    path.write_text(json.dumps(config, allow_nan=True))
    try:
        model = from_pretrained(work / "ckpt")
    except Exception as err:  # noqa: BLE001
        _bounded(err)
        return
    assert model.config.drop_config["attn"] == [1]  # only the drop the weights really have can load


recipe_keys = st.sampled_from(["model", "name", "output", "dtype", "device_map", "calibration", "drop", "recover",
                               "quantize", "evaluate", "mode", "drop ", "", "n"])
section_keys = st.sampled_from(["kind", "n", "ratio", "method", "metric", "protect", "steps", "lr", "source",
                                "n_samples", "seq_len", "tasks", "limit", "bits", "mode", "merge", "xyz"])
recipes = st.dictionaries(recipe_keys, st.one_of(json_values, st.dictionaries(section_keys, json_values, max_size=5)),
                          max_size=8)


@FUZZ
@given(recipe=recipes, raw=st.one_of(st.none(), st.text(max_size=200)))
def test_recipes_validate_or_raise_a_bounded_layerdrop_error(tmp_path_factory, recipe, raw):
    import yaml

    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    text = raw if raw is not None else yaml.safe_dump(recipe, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    try:
        parsed, _ = load_recipe(path)
    except Exception as err:  # noqa: BLE001
        _bounded(err)
        return
    assert parsed.model and parsed.drop.kind in ("attn", "mlp", "block", "joint")


calibration_sources = st.one_of(
    st.lists(st.text(max_size=60), max_size=6),
    st.tuples(st.sampled_from([".txt", ".json", ".jsonl", ".parquet", ".text"]), st.binary(max_size=300)),
    st.text(max_size=30),
)


@FUZZ
@given(source=calibration_sources, n_samples=st.integers(-2, 4), seq_len=st.integers(-2, 48))
def test_calibration_sources_load_or_raise_a_bounded_layerdrop_error(tmp_path_factory, source, n_samples, seq_len):
    if isinstance(source, tuple):
        path = tmp_path_factory.mktemp("calib") / f"data{source[0]}"
        path.write_bytes(source[1])
        source = path
    elif isinstance(source, str) and "/" not in source:
        source = source + "/" if source else source  # never a real hub lookup: a hub id needs exactly one "/"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            calib = load_calibration(source, byte_tokenizer(), n_samples=n_samples, seq_len=seq_len)
        except Exception as err:  # noqa: BLE001
            _bounded(err)
            return
    assert calib.input_ids.shape[1] == seq_len and 1 <= calib.n_samples <= n_samples


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("fuzz-cli") / "tiny")


option_values = st.one_of(st.integers(-5, 40).map(str), st.floats(allow_nan=True).map(str),
                          st.sampled_from(["attn", "mlp", "block", "joint", "random", "reverse", "last-k",
                                           "importance", "iterative", "cosine", "0,1", "1,,2", "-1", "nan", ""]),
                          st.text(max_size=12))
cli_options = st.lists(st.tuples(st.sampled_from(["--kind", "-n", "--ratio", "--method", "--metric", "--protect",
                                                  "--attn", "--mlp", "--blocks", "--seq-len", "--n-samples",
                                                  "--seed", "--dtype"]), option_values), max_size=5)


@FUZZ
@given(options=cli_options, overwrite=st.booleans())
def test_drop_command_lines_work_or_fail_with_one_line_and_touch_no_user_file(tiny_dir, tmp_path_factory, options,
                                                                              overwrite):
    out = tmp_path_factory.mktemp("out") / "pruned"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["drop", str(tiny_dir), "-o", str(out), "--n-samples", "2", "--seq-len", "16"]
    args += [a for pair in options for a in pair] + (["--overwrite"] if overwrite else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code in (0, 1, 2), (args, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (args, repr(result.exception))
    if result.exit_code == 1:
        assert result.output.startswith("Error:") and len(result.output) <= MAX_MESSAGE + 200, result.output
    if result.exit_code == 0:
        assert overwrite and (out / "config.json").is_file()  # replaced only because --overwrite said so
        from_pretrained(out)  # and what is there is whole
    else:
        assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]
    assert math.isfinite(len(args))
