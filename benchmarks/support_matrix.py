"""README support matrix, generated from the test suite: which feature works for which model family.

Why from the tests: a hand-written table drifts; this one is the outcome of the tests that check each claim
(patched forward vs the hand-written reference, cached generation vs no-cache recomputation, checkpoint round
trips with and without the package, importance scores vs the reference's residual stream). The script runs
those tests with pytest (or reads a JUnit XML from an earlier run, `--junit`), maps each test case to the
model families it covers (tiny random models of every family in `tests/conftest.py`), and adds quick
in-process checks for the formats no test parametrises over families yet: the three exports (each either
writes a checkpoint whose reload computes the same logits, or refuses with a reason) and AWQ (whether the
quantiser is installed and knows the family).

    python benchmarks/support_matrix.py               # runs the tests (CPU, ~5-15 min on 2 cores)
    python benchmarks/support_matrix.py --junit X.xml # reuses a run: pytest --junitxml X.xml ...

Writes benchmarks/results/support_matrix.md (and .json) and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]

# feature -> [(test file, test function, how its cases map to families)]. "arch": the case id names an
# ARCHITECTURE_CASES entry; "suffix": the id ends with "-<model_type>"; a list: the families it covers.
NEW_FAMILIES = ["mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"]
FEATURES: dict[str, list[tuple[str, str, object]]] = {
    "drop = reference forward": [
        ("tests/test_patch.py", "test_reference_forward_matches_the_unpatched_model", "arch"),
        ("tests/test_patch.py", "test_empty_drop_is_bit_identical", "arch"),
        ("tests/test_patch.py", "test_patched_logits_equal_reference_for_random_drops", "arch"),
    ],
    "compact KV cache: generation = no-cache (dynamic, static, past the window)": [
        ("tests/test_kv_cache.py", "test_greedy_generation_equals_full_recomputation", "arch"),
        ("tests/test_kv_cache.py", "test_kv_bytes_are_kept_over_total_times_baseline", "arch"),
        ("tests/test_kv_cache.py", "test_padded_batch_with_first_attention_dropped", ["llama"]),
        ("tests/test_architectures.py", "test_each_kept_attention_keeps_its_kind_in_the_compact_cache", "arch"),
        ("tests/test_architectures.py", "test_left_padded_batch_crossing_the_window_on_a_hybrid_model",
         ["gemma3_text"]),
    ],
    "save / load (library + remote code, load-time drop)": [
        ("tests/test_checkpoint.py", "test_round_trip_library_and_remote_code", "suffix"),
        ("tests/test_checkpoint.py", "test_load_time_drop_equals_apply_drop_and_skips_dropped_weights", ["mistral"]),
        ("tests/test_architectures.py", "test_round_trips_and_load_time_drop_equal_the_reference", "arch"),
    ],
    "load + generate without the package": [
        ("tests/test_checkpoint.py", "test_loads_and_generates_where_layerdrop_patch_is_not_importable", ["llama"]),
        ("tests/test_architectures.py",
         "test_every_family_loads_and_generates_past_the_window_without_the_package", NEW_FAMILIES),
    ],
    "importance scores": [
        ("tests/test_scoring.py", "test_scores_match_naive_reference", ["llama"]),
        ("tests/test_architectures.py", "test_scores_follow_each_familys_residual_stream", "arch"),
    ],
}


def _case_families() -> dict[str, str]:
    from tests.conftest import ARCHITECTURE_CASES

    return {case.id: case.values[0][0] for case in ARCHITECTURE_CASES}


def _families_of(name: str, mapping: object, cases: dict[str, str]) -> list[str]:
    param = name[name.index("[") + 1:-1] if "[" in name else ""
    if isinstance(mapping, list):
        return mapping
    if mapping == "suffix":
        return [family for family in FAMILIES if param.endswith("-" + family) or param == family]
    matches = [case for case in cases if param == case or param.startswith(case + "-")]
    return [cases[max(matches, key=len)]] if matches else []


def run_tests(junit: Path) -> None:
    nodes = sorted({f"{file}::{func}" for tests in FEATURES.values() for file, func, _ in tests})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not integration",
           f"--junitxml={junit}", *nodes]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=False)


def collect(junit: Path) -> dict[str, dict[str, dict[str, list[str]]]]:
    """{feature: {family: {"passed": [...], "failed": [...]}}} from a JUnit XML file."""
    cases = _case_families()
    outcome: dict[tuple[str, str], str] = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        func = tc.get("name", "")
        file = tc.get("classname", "").replace(".", "/") + ".py"
        state = "failed" if tc.find("failure") is not None or tc.find("error") is not None else (
            "skipped" if tc.find("skipped") is not None else "passed")
        outcome[(file, func)] = state
    table: dict[str, dict[str, dict[str, list[str]]]] = {}
    for feature, tests in FEATURES.items():
        cells = table.setdefault(feature, {f: {"passed": [], "failed": [], "skipped": []} for f in FAMILIES})
        for (file, name), state in outcome.items():
            for test_file, func, mapping in tests:
                if file == test_file and name.split("[")[0] == func:
                    for family in _families_of(name, mapping, cases):
                        cells[family][state].append(name)
    return table


# --------------------------------------------------------------------------- quick in-process checks
def _tiny(family: str):
    """The family's first test case; MLP width 256 because the Nemotron-NAS format only expresses widths that
    are multiples of 256 (the tests' 96 would be refused for that reason alone)."""
    from tests.conftest import ARCHITECTURE_CASES, tiny_model

    model_type, overrides = next(c.values[0] for c in ARCHITECTURE_CASES if c.values[0][0] == family)
    return tiny_model(model_type, 6, **{**overrides, "intermediate_size": 256})


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


def _refusal(err: Exception) -> str:
    return f"refused: {str(err).splitlines()[0][:110]}"


def check_exports(family: str) -> dict[str, str]:
    """Each export format: 'ok' (reload computes the dropped model's logits), 'writes' (file produced, no
    reader here to verify it), or the refusal / error."""
    import torch
    from transformers import AutoModelForCausalLM

    from layerdrop_patch import DropConfig
    from layerdrop_patch.patch import apply_drop

    results = {}
    ids = torch.randint(1, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    base = _tiny(family)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            from layerdrop_patch.export.standard import export_standard

            model = apply_drop(copy.deepcopy(base), DropConfig.blocks([1, 4]))
            export_standard(model, Path(tmp) / "standard")
            stock = AutoModelForCausalLM.from_pretrained(Path(tmp) / "standard").eval()
            same = torch.allclose(_logits(stock, ids), _logits(model, ids), atol=1e-5, rtol=1e-4)
            results["export: standard (block drops)"] = "ok" if same else "WRONG logits after reload"
        except (ValueError, NotImplementedError) as err:
            results["export: standard (block drops)"] = _refusal(err)
        except Exception as err:  # noqa: BLE001 - reported in the table, not hidden
            results["export: standard (block drops)"] = f"error: {type(err).__name__}: {str(err)[:100]}"
        model = apply_drop(copy.deepcopy(base), DropConfig(attn=[0, 3, 5], mlp=[1, 3]))
        try:
            from layerdrop_patch.export.decilm import export_decilm, load_decilm

            export_decilm(model, Path(tmp) / "decilm")
            same = torch.allclose(_logits(load_decilm(Path(tmp) / "decilm").eval(), ids), _logits(model, ids),
                                  atol=1e-5, rtol=1e-4)
            results["export: decilm (vLLM)"] = "ok" if same else "WRONG logits after reload"
        except (ValueError, NotImplementedError) as err:
            results["export: decilm (vLLM)"] = _refusal(err)
        except Exception as err:  # noqa: BLE001
            results["export: decilm (vLLM)"] = f"error: {type(err).__name__}: {str(err)[:100]}"
        try:
            from layerdrop_patch.export.gguf import export_gguf

            export_gguf(model, Path(tmp) / "model.gguf")
            results["export: gguf (llama.cpp)"] = "writes (not run here: no llama.cpp)"
        except (ValueError, NotImplementedError) as err:
            results["export: gguf (llama.cpp)"] = _refusal(err)
        except Exception as err:  # noqa: BLE001
            results["export: gguf (llama.cpp)"] = f"error: {type(err).__name__}: {str(err)[:100]}"
    return results


def check_awq(family: str) -> str:
    try:
        from gptqmodel.models.auto import MODEL_MAP  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - any import failure means: cannot check here
        return "not checked (gptqmodel not installed)"
    return "GPTQModel knows it (not quantised here)" if family in MODEL_MAP else "refused: no GPTQModel definition"


# --------------------------------------------------------------------------- output
def _cell(cell: dict[str, list[str]]) -> str:
    if cell["failed"]:
        return f"FAIL ({len(cell['failed'])}: {', '.join(cell['failed'][:2])})"
    if cell["passed"]:
        n = len(cell["passed"])
        return f"yes ({n} test{'s' if n > 1 else ''})"
    return "skipped" if cell["skipped"] else "not tested"


def render(table, extra) -> str:
    columns = list(table) + list(next(iter(extra.values())))
    lines = ["| model_type | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for family in FAMILIES:
        cells = [_cell(table[f][family]) for f in table] + [extra[family][c] for c in extra[family]]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--junit", type=Path, help="JUnit XML of an earlier pytest run (skips running tests)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    junit = args.junit or RESULTS / "support_matrix_junit.xml"
    if args.junit is None:
        run_tests(junit)
    table = collect(junit)
    extra = {}
    for family in FAMILIES:
        try:
            extra[family] = {**check_exports(family), "AWQ (GPTQModel)": check_awq(family)}
        except Exception:  # noqa: BLE001
            traceback.print_exc()
            raise
    import torch
    import transformers

    md = render(table, extra)
    header = (f"Generated by `python benchmarks/support_matrix.py` (torch {torch.__version__}, transformers "
              f"{transformers.__version__}) from {junit.name} and quick export checks on tiny random models of "
              "each family (`tests/conftest.py` ARCHITECTURE_CASES: sliding windows of 6 tokens, interleaved "
              "for gemma2/gemma3_text/qwen2). 'yes (n tests)': every mapped test passed (a test counts for each "
              "family it covers); exports: 'ok' = the written checkpoint reloads (stock transformers for "
              "standard, `load_decilm` for decilm) and computes the dropped model's logits; export checks use "
              "each family's first test case (mistral: no sliding window).\n\n")
    (RESULTS / "support_matrix.md").write_text(header + md + "\n")
    (RESULTS / "support_matrix.json").write_text(json.dumps({"tests": table, "checks": extra}, indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
