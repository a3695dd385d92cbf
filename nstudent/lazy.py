"""Packages that name their exports without importing them (PEP 562).

The GPU machine has JAX but no TensorFlow. A package whose __init__ imported
its tf.data modules eagerly would make even its TensorFlow-free parts (the
models, the training steps, device noise, label selection) unusable there.
"""

import importlib


def exports(package, homes):
    """A module-level __getattr__ importing `homes[name]` (a submodule) on first use."""

    def __getattr__(name):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return __getattr__
