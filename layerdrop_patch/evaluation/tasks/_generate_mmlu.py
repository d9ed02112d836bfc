"""Regenerate the 57 `ldp_mmlu_<subject>.yaml` files and the `ldp_mmlu.yaml` group (run from this folder).

Why generated: one YAML per subject is how lm-eval's own `mmlu` works (per-subject description and per-subject
5-shot dev examples); writing 57 near-identical files by hand invites typos.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
SUBJECTS = sorted(p.name[: -len("_test.csv")] for p in (HERE.parent.parent / "data" / "mmlu" / "test").glob("*_test.csv"))


def main() -> None:
    for subject in SUBJECTS:
        text = (
            f'include: _ldp_mmlu_template_yaml\n'
            f'task: ldp_mmlu_{subject}\n'
            f'task_alias: {subject}\n'
            f'dataset_kwargs:\n  subject: {subject}\n'
            f'description: "The following are multiple choice questions (with answers) about '
            f'{subject.replace("_", " ")}.\\n\\n"\n'
        )
        (HERE / f"ldp_mmlu_{subject}.yaml").write_text(text)
    tasks = "".join(f"  - ldp_mmlu_{s}\n" for s in SUBJECTS)
    (HERE / "ldp_mmlu.yaml").write_text(
        "# Offline copy of lm-eval's `mmlu` group: 57 subjects, accuracy averaged over all questions\n"
        "# (weighted by subject size, as lm-eval does).\n"
        f"group: ldp_mmlu\ntask:\n{tasks}aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
        "metadata:\n  version: 2\n"
    )


if __name__ == "__main__":
    main()
