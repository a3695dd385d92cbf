"""Writing artifacts: atomic files and folders, `.keras` and SavedModel exports."""

from nstudent.export.atomic import atomic_path, read_json, write_json  # noqa: F401
from nstudent.export.saved_model import export_saved_model, save_keras  # noqa: F401
from nstudent.export.run import (  # noqa: F401
    METRICS, MODEL_INFO, PRETRAIN, is_finished, write_run)
