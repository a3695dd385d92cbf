"""What a tool does before TensorFlow loads: its C++ start-up lines obey the log level.

TensorFlow 2.21 writes "All log messages before absl::InitializeLog() ..." and, on
CPUs where it turns oneDNN on by default, an info line about it to standard error
while it is imported, whatever TF_CPP_MIN_LOG_LEVEL says; a bad flag's one `error:`
line would come third. At TF_CPP_MIN_LOG_LEVEL >= 1 (the tools' default 2) standard
error is closed to them during the import only; Python errors still show after it.
"""

import os


def import_tensorflow_quietly():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("", "0"):
        import tensorflow  # noqa: F401
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
