"""Training: optimizers, the supervised teacher and the noisy student."""

from nstudent import lazy

_HOMES = {
    "OPTIMIZERS": "optim", "make_optimizer": "optim",
    "NoisyStudent": "steps", "Noised": "steps", "with_device_noise": "steps",
    "TrainConfig": "supervised", "classification_metrics": "supervised",
    "compile_for_training": "supervised", "fit": "supervised",
    "progress_verbosity": "supervised",
    "train_student": "student", "StudentStage": "student",
    "StudentConfig": "student", "train_teacher": "teacher",
    "DISTRIBUTIONS": "distribute", "check_distribution": "distribute",
    "configure_distribution": "distribute", "parse_tf_config": "distribute",
    "StageRun": "runs",
    "finetune_config": "from_pretrained", "apply_pretrained": "from_pretrained",
    "pretrained_weights": "from_pretrained",
    "read_pretrain_run": "from_pretrained", "check_pretrained": "from_pretrained",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy.exports(__name__, _HOMES)
