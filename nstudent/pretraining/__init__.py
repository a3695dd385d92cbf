"""SimCLRv2's contrastive pretraining and the pieces it needs (NT-Xent, views, kNN).
Above training (it reuses its steps, optimizers and runs); the projection head lives
in models/ and fine-tuning from its middle in training/from_pretrained.py, so the
teacher needs nothing from here."""

from nstudent import lazy

_HOMES = {
    "ContrastiveConfig": "stage", "pretrain": "stage", "check_batch": "stage",
    "ContrastiveLearner": "learner", "nt_xent": "losses",
    "knn_accuracy": "knn", "knn_predict": "knn",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy.exports(__name__, _HOMES)
