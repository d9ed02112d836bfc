"""Scoring: how redundant is each attention, MLP and block? (He et al. 2024, and the metrics beside it.)

    load_calibration / CalibrationConfig   packed token chunks from bundled, local, `datasets` or hub text
    compute_importance                     one streaming pass (or layer-at-a-time offloaded) -> ImportanceScores
    METRICS / register_metric              the importance metrics, by name
    plot_importance                        per-layer scores (the paper's Figs. 2-3)
    score_robustness / RobustnessConfig    do sources and sample counts change the ranking? (Figs. 3 and 10)
"""

from layerdrop_patch.scoring.calibration import Calibration, CalibrationConfig, load_calibration, read_documents
from layerdrop_patch.scoring.metrics import DEFAULT_METRIC, METRICS, register_metric
from layerdrop_patch.scoring.plots import plot_importance
from layerdrop_patch.scoring.robustness import RobustnessConfig, RobustnessResult, score_robustness
from layerdrop_patch.scoring.robustness_plots import plot_scores_by_samples, plot_scores_by_source
from layerdrop_patch.scoring.scores import KINDS, ImportanceScores
from layerdrop_patch.scoring.streaming import compute_importance

__all__ = ["Calibration", "CalibrationConfig", "load_calibration", "read_documents", "DEFAULT_METRIC", "METRICS",
           "register_metric", "plot_importance", "KINDS", "ImportanceScores", "compute_importance",
           "RobustnessConfig", "RobustnessResult", "score_robustness", "plot_scores_by_source", "plot_scores_by_samples"]
