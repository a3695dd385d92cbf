"""nstudent: Self-training with Noisy Student in Keras 3 (TensorFlow or JAX backend).

`import nstudent as ns` gives the Python API (nstudent/api.py, loaded on first use):
ns.preset, ns.setup, ns.load_data, ns.train_teacher, ns.pseudo_label, ns.train_student,
and what they return (ns.Recipe, ns.Run, ns.PseudoLabelSet)."""

from nstudent import lazy

__version__ = "0.1.0"

_API = ("preset", "setup", "load_data", "train_teacher", "pseudo_label", "train_student",
        "Recipe", "Run", "PseudoLabelSet")
__all__ = sorted(_API)
__getattr__ = lazy.exports(__name__, {name: "api" for name in _API})
