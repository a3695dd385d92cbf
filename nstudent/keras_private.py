"""Every use of a private Keras 3 attribute, each behind one small function.

Keras has no public API for these four needs; tests/test_keras_private.py calls each
on a real model or optimizer of the pinned Keras, so an upgrade that renames one
fails there by name rather than deep inside a stage.
"""


def ema_pairs(optimizer):
    """(model variable, its moving average) of an optimizer with use_ema: Keras keeps
    the averages in `_model_variables_moving_average`, aligned with
    `_trainable_variables` (optimizer.finalize_variable_values swaps them for good,
    not for the length of a validation)."""
    return list(zip(optimizer._trainable_variables,
                    optimizer._model_variables_moving_average))


def single_source(layer):
    """The layer whose output alone feeds `layer` in a functional model, or None when
    `layer` is called more than once (Keras' node graph: `_inbound_nodes`)."""
    if len(layer._inbound_nodes) != 1:
        return None
    return layer._inbound_nodes[0].input_tensors[0]._keras_history[0]


def consumers(layer):
    """How many calls take `layer`'s output (`_outbound_nodes`)."""
    return len(layer._outbound_nodes)


def build_once_from(model, batch):
    """Builds `model`'s metrics from one plain batch and stops Keras from building
    them again from a batch it first reduces across workers (`_symbolic_build`,
    `_maybe_symbolic_build`), which fails under MultiWorkerMirroredStrategy."""
    model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda *args, **kwargs: None
