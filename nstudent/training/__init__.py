"""Training: optimizers, schedules and the supervised (teacher) loop."""

from nstudent.training.optim import OPTIMIZERS, make_optimizer  # noqa: F401
from nstudent.training.supervised import (  # noqa: F401
    TrainConfig, classification_metrics, compile_for_training, fit, progress_verbosity)
from nstudent.training.teacher import train_teacher  # noqa: F401
