"""Evaluation: loading exported models, accuracy, corruptions and FGSM."""

from nstudent.evaluation.classify import (  # noqa: F401
    KERAS_FILE, MODEL_INFO, SAVED_MODEL_DIR, Classifier, load_classifier, multilabel_scores,
    top_k_accuracy)
from nstudent.evaluation.robustness import (  # noqa: F401
    CORRUPTIONS, SEVERITIES, corrupt, fgsm, fgsm_accuracy, parse_epsilon, report_table,
    robustness_report, spread_subset)
