"""Hooks referenced by the local task YAMLs (`!function utils.<name>`).

lm-eval imports this file by path, so it only re-exports the package functions: the data loading lives in
`layerdrop_patch.evaluation.local_data` (importable and unit-tested), the scoring in
`layerdrop_patch.evaluation.task_scoring`.
"""

from layerdrop_patch.evaluation.local_data import (  # noqa: F401
    arc_challenge,
    arc_easy,
    boolq,
    gsm8k,
    hellaswag,
    lambada_openai,
    mmlu,
    openbookqa,
    piqa,
    rte,
    truthfulqa,
    winogrande,
)
from layerdrop_patch.evaluation.task_scoring import (  # noqa: F401
    truthfulqa_mc2_process_results,
    winogrande_doc_to_choice,
    winogrande_doc_to_target,
    winogrande_doc_to_text,
)
