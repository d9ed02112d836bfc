"""Local lm-eval task copies: prompts, choices and gold built from the bundled files, and the scoring of
fixed log-likelihoods. Expected values are derived here from the raw files, independently of local_data."""

import bz2
import csv
import json
import math
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval")

from layerdrop_patch.evaluation import TASKS  # noqa: E402
from layerdrop_patch.evaluation.harness import TASKS_DIR, load_task  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "layerdrop_patch" / "data"


def _task(name):
    return load_task(name, offline=True)["tasks"][name]


def _jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def _results(lls):
    return [(ll, False) for ll in lls]


@pytest.fixture(scope="module")
def arc():
    return _task("ldp_arc_challenge")


def test_arc_prompt_choices_gold(arc):
    raw = _jsonl(DATA / "arc" / "ARC-Challenge-Test.jsonl")
    # one item with letter labels and one with numeric labels, if any
    picks = [0] + [i for i, r in enumerate(raw) if r["question"]["choices"][0]["label"] == "1"][:1]
    docs = arc.eval_docs
    for i in picks:
        r, doc = raw[i], docs[i]
        assert arc.doc_to_text(doc) == f"Question: {r['question']['stem']}\nAnswer:"
        texts = [c["text"] for c in r["question"]["choices"]]
        assert arc.doc_to_choice(doc) == texts
        labels = [c["label"] for c in r["question"]["choices"]]
        assert arc.doc_to_target(doc) == labels.index(r["answerKey"])
    assert len(docs) == 1172


def test_multiple_choice_scoring_acc_vs_acc_norm(arc):
    doc = arc.eval_docs[0]
    choices = arc.doc_to_choice(doc)
    gold = arc.doc_to_target(doc)
    # raw log-likelihood favours the shortest choice; per-character normalisation favours the longest
    lengths = [len(c) for c in choices]
    short, long_ = lengths.index(min(lengths)), lengths.index(max(lengths))
    lls = [-3.0 * lengths[i] for i in range(len(choices))]
    lls[short] = -1.0
    lls[long_] = -0.5 * lengths[long_]
    expected_pred = max(range(len(lls)), key=lambda i: lls[i])
    expected_norm = max(range(len(lls)), key=lambda i: lls[i] / lengths[i])
    out = arc.process_results(doc, _results(lls))
    assert out["acc"] == float(expected_pred == gold)
    assert out["acc_norm"] == float(expected_norm == gold)
    # make gold the winner of both
    lls = [-100.0] * len(choices)
    lls[gold] = -0.1
    out = arc.process_results(doc, _results(lls))
    assert out == {"acc": 1.0, "acc_norm": 1.0}


def test_requests_are_context_plus_space_choice(arc):
    doc = arc.eval_docs[3]
    ctx = arc.fewshot_context(doc, 0)
    reqs = arc.construct_requests(doc, ctx, metadata=("ldp_arc_challenge", 3, 1))
    assert [r.arguments for r in reqs] == [(ctx, " " + c) for c in arc.doc_to_choice(doc)]


def test_hellaswag_from_text_export():
    task = _task("ldp_hellaswag")
    with bz2.open(DATA / "hellaswag" / "hellaswag_val_full.txt.bz2", "rt", encoding="utf-8") as fh:
        lines = [next(fh).rstrip("\n") for _ in range(12)]
    for k in (0, 1):
        doc = task.eval_docs[k]
        block = lines[6 * k : 6 * k + 6]
        assert task.doc_to_text(doc) == block[0]
        assert task.doc_to_choice(doc) == block[2:6]
        assert task.doc_to_target(doc) == int(block[1])
    assert len(task.eval_docs) == 10042


def test_piqa_boolq_rte_openbookqa():
    piqa = _task("ldp_piqa")
    raw = _jsonl(DATA / "piqa" / "valid.jsonl")[5]
    label = int(open(DATA / "piqa" / "valid-labels.lst").read().split()[5])
    doc = piqa.eval_docs[5]
    assert piqa.doc_to_text(doc) == f"Question: {raw['goal']}\nAnswer:"
    assert piqa.doc_to_choice(doc) == [raw["sol1"], raw["sol2"]]
    assert piqa.doc_to_target(doc) == label

    boolq = _task("ldp_boolq")
    raw_all = _jsonl(DATA / "boolq" / "dev.jsonl")
    for i in (0, next(i for i, r in enumerate(raw_all) if r["answer"])):
        doc = boolq.eval_docs[i]
        assert boolq.doc_to_text(doc) == f"{raw_all[i]['passage']}\nQuestion: {raw_all[i]['question']}?\nAnswer:"
        assert boolq.doc_to_choice(doc) == ["no", "yes"]
        assert boolq.doc_to_target(doc) == int(raw_all[i]["answer"])

    rte = _task("ldp_rte")
    doc = rte.eval_docs[0]
    assert doc["sentence2"] == "Christopher Reeve had an accident."
    assert rte.doc_to_text(doc).endswith("\nQuestion: Christopher Reeve had an accident. True or False?\nAnswer:")
    assert rte.doc_to_choice(doc) == ["True", "False"]
    assert rte.doc_to_target(doc) == 1  # not_entailment -> "False"
    assert rte.process_results(doc, _results([-2.0, -1.0])) == {"acc": 1.0}
    assert rte.process_results(doc, _results([-1.0, -2.0])) == {"acc": 0.0}

    obqa = _task("ldp_openbookqa")
    raw = _jsonl(DATA / "openbookqa" / "test.jsonl")[0]
    doc = obqa.eval_docs[0]
    assert obqa.doc_to_text(doc) == raw["question"]["stem"]
    assert obqa.doc_to_choice(doc) == [c["text"] for c in raw["question"]["choices"]]
    assert obqa.doc_to_target(doc) == "ABCD".index(raw["answerKey"])
    assert len(obqa.eval_docs) == 500


def test_winogrande_partial_scoring():
    task = _task("ldp_winogrande")
    raw = _jsonl(DATA / "winogrande" / "dev.jsonl")[0]
    doc = task.eval_docs[0]
    blank = raw["sentence"].index("_")
    assert task.doc_to_choice(doc) == [raw["sentence"][:blank] + raw["option1"], raw["sentence"][:blank] + raw["option2"]]
    assert task.doc_to_target(doc) == raw["sentence"][blank + 1 :].strip()
    gold = int(raw["answer"]) - 1
    assert task.doc_to_text(doc) == gold
    lls = [-5.0, -5.0]
    lls[gold] = -1.0
    assert task.process_results(doc, _results(lls))["acc"] == 1.0
    lls = [-1.0, -1.0]
    lls[gold] = -5.0
    assert task.process_results(doc, _results(lls))["acc"] == 0.0


def test_mmlu_five_shot_prompt_uses_dev_rows_in_order():
    task = _task("ldp_mmlu_anatomy")
    task.set_fewshot_seed(1234)
    with open(DATA / "mmlu" / "dev" / "anatomy_dev.csv", newline="", encoding="utf-8") as fh:
        dev = list(csv.DictReader(fh))
    with open(DATA / "mmlu" / "test" / "anatomy_test.csv", newline="", encoding="utf-8") as fh:
        test = list(csv.DictReader(fh))

    def block(r):
        return (f"{r['question'].strip()}\nA. {r['choice0']}\nB. {r['choice1']}\nC. {r['choice2']}\n"
                f"D. {r['choice3']}\nAnswer:")

    shots = "".join(block(r) + " " + "ABCD"[int(r["answer"])] + "\n\n" for r in dev)
    expected = "The following are multiple choice questions (with answers) about anatomy.\n\n" + shots + block(test[0])
    doc = task.eval_docs[0]
    assert task.fewshot_context(doc, 5) == expected
    assert task.doc_to_choice(doc) == ["A", "B", "C", "D"]
    assert task.doc_to_target(doc) == int(test[0]["answer"])


def test_lambada_context_and_target():
    task = _task("ldp_lambada_openai")
    text = _jsonl(DATA / "lambada" / "lambada_test.jsonl")[0]["text"]
    doc = task.eval_docs[0]
    words = text.split(" ")
    assert task.doc_to_text(doc) == " ".join(words[:-1])
    assert task.doc_to_target(doc) == " " + words[-1]
    assert task.process_results(doc, [(-2.5, True)]) == {"perplexity": -2.5, "acc": 1}


def test_truthfulqa_mc1_mc2():
    raw = json.load(open(DATA / "truthfulqa" / "mc_task_v0.json", encoding="utf-8"))[0]
    mc1 = _task("ldp_truthfulqa_mc1")
    doc = mc1.eval_docs[0]
    assert mc1.doc_to_choice(doc) == list(raw["mc1_targets"])
    assert list(raw["mc1_targets"].values())[0] == 1 and mc1.doc_to_target(doc) == 0
    assert mc1.doc_to_text(doc).endswith(f"\n\nQ: {raw['question']}\nA:")
    assert mc1.doc_to_text(doc).startswith("Q: What is human life expectancy in the United States?\n")

    mc2 = _task("ldp_truthfulqa_mc2")
    doc = mc2.eval_docs[0]
    labels = list(raw["mc2_targets"].values())
    assert mc2.doc_to_choice(doc) == list(raw["mc2_targets"])
    lls = [-1.0 - 0.5 * i for i in range(len(labels))]
    probs = [math.exp(x) for x in lls]
    expected = sum(p for p, lab in zip(probs, labels) if lab == 1) / sum(probs)
    assert mc2.process_results(doc, _results(lls))["acc"] == pytest.approx(expected, rel=1e-12)
    # very negative log-likelihoods must not underflow to nan
    far = [x - 2000.0 for x in lls]
    assert mc2.process_results(doc, _results(far))["acc"] == pytest.approx(expected, rel=1e-9)


def test_gsm8k_prompt_and_exact_match():
    task = _task("ldp_gsm8k")
    raw = _jsonl(DATA / "gsm8k" / "test.jsonl")[0]
    doc = task.eval_docs[0]
    assert task.doc_to_text(doc) == f"Question: {raw['question']}\nAnswer:"
    final = raw["answer"].split("#### ")[-1].strip()
    assert task.process_results(doc, [final])["exact_match"] == 1.0
    assert task.process_results(doc, [str(int(final) + 1)])["exact_match"] == 0.0


class _IgnoreTags(yaml.SafeLoader):
    pass


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: f"!{suffix}")


def _yaml(path):
    data = yaml.load(open(path, encoding="utf-8"), Loader=_IgnoreTags)
    if "include" in data:
        base = _yaml(Path(path).parent / data["include"])
        base.update({k: v for k, v in data.items() if k != "include"})
        data = base
    return data


@pytest.mark.parametrize("ours,theirs", [
    ("ldp_arc_easy.yaml", "arc/arc_easy.yaml"), ("ldp_piqa.yaml", "piqa/piqa.yaml"),
    ("ldp_openbookqa.yaml", "openbookqa/openbookqa.yaml"), ("ldp_boolq.yaml", "super_glue/boolq/default.yaml"),
    ("ldp_rte.yaml", "glue/rte/default.yaml"), ("ldp_lambada_openai.yaml", "lambada/lambada_openai.yaml"),
    ("ldp_gsm8k.yaml", "gsm8k/gsm8k.yaml"), ("ldp_truthfulqa_mc1.yaml", "truthfulqa/truthfulqa_mc1.yaml"),
    ("_ldp_mmlu_template_yaml", "mmlu/default/_default_template_yaml"),
])
def test_templates_match_installed_lm_eval(ours, theirs):
    import lm_eval

    std = Path(lm_eval.__file__).parent / "tasks" / theirs
    a, b = _yaml(TASKS_DIR / ours), _yaml(std)
    for key in ("doc_to_text", "doc_to_choice", "doc_to_target", "output_type", "generation_kwargs", "filter_list"):
        assert a.get(key) == b.get(key), key
    assert [m["metric"] for m in a["metric_list"]] == [m["metric"] for m in b["metric_list"]]


def test_every_task_spec_has_a_local_definition():
    names = {p.stem for p in TASKS_DIR.glob("ldp_*.yaml")}
    for spec in TASKS.values():
        assert spec.local in names
