"""Evaluation: loading exported models and measuring accuracy."""

from nstudent.evaluation.classify import (  # noqa: F401
    KERAS_FILE, MODEL_INFO, SAVED_MODEL_DIR, Classifier, load_classifier, top_k_accuracy)
