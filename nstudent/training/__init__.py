"""Training: optimizers, the supervised teacher and the noisy student."""

from nstudent.training.optim import OPTIMIZERS, make_optimizer  # noqa: F401
from nstudent.training.student import NoisyStudent, train_student  # noqa: F401
from nstudent.training.supervised import (  # noqa: F401
    TrainConfig, classification_metrics, compile_for_training, fit, progress_verbosity)
from nstudent.training.teacher import train_teacher  # noqa: F401
