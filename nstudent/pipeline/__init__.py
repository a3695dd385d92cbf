"""The noisy student loop: teacher -> pseudo-labels -> student -> next teacher."""

from nstudent.pipeline.generations import Plan, plan_steps, run_pipeline  # noqa: F401
from nstudent.pipeline.manifest import Manifest  # noqa: F401
from nstudent.pipeline.report import plot_accuracy, results_table  # noqa: F401
