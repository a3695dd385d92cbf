"""SimCLRv2: contrastive pretraining with a projection head, fine-tuning from a
middle layer of it, and the pieces they need (NT-Xent, views, kNN)."""

from nstudent import lazy

_HOMES = {
    "ContrastiveConfig": "stage", "pretrain": "stage", "check_batch": "stage",
    "HeadConfig": "network", "build_pretrain_network": "network",
    "ContrastiveLearner": "learner", "nt_xent": "losses",
    "knn_accuracy": "knn", "knn_predict": "knn",
    "finetune_config": "finetune", "apply_pretrained": "finetune",
    "pretrained_weights": "finetune",
    "read_pretrain_run": "finetune", "check_pretrained": "finetune",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy.exports(__name__, _HOMES)
