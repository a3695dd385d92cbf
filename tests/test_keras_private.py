"""Each private Keras attribute nstudent relies on (nstudent/keras_private.py), called
on real objects of the pinned Keras: an upgrade that renames one fails here, by name."""

import keras
import numpy as np

from nstudent.keras_private import build_once_from, consumers, ema_pairs, single_source


def _tiny():
    inputs = keras.Input((6, 6, 1))
    conv = keras.layers.Conv2D(2, 3, use_bias=False, name="conv")
    x = keras.layers.BatchNormalization(name="bn")(conv(inputs))
    outputs = keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def test_node_graph_gives_the_feeding_layer_and_its_consumers():
    model = _tiny()
    assert single_source(model.get_layer("bn")) is model.get_layer("conv")
    assert consumers(model.get_layer("conv")) == 1
    shared, left, right = keras.layers.Dense(3), keras.layers.Dense(1), keras.layers.Dense(1)
    a = keras.Input((3,))
    twice = shared(shared(a))  # called twice: no single source
    keras.Model(a, [left(twice), right(twice)])
    assert single_source(shared) is None and single_source(left) is shared
    assert consumers(shared) == 3  # its second call, left and right


def test_ema_pairs_are_each_variable_and_its_average():
    model = _tiny()
    optimizer = keras.optimizers.SGD(0.1, use_ema=True, ema_momentum=0.5,
                                     ema_overwrite_frequency=None)
    model.compile(optimizer, "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 6, 6, 1)).astype("float32"), np.ones((8, 2), "float32")
    for i in range(4):  # fit() would end by writing the averages into the model
        model.train_on_batch(x[2 * i:2 * i + 2], y[2 * i:2 * i + 2])
    pairs = ema_pairs(optimizer)
    assert [v.path for v, _ in pairs] == [v.path for v in model.trainable_variables]
    assert all(v.shape == a.shape for v, a in pairs)
    head = dict((v.path, a) for v, a in pairs)["head/kernel"]
    assert not np.allclose(keras.ops.convert_to_numpy(model.get_layer("head").kernel),
                           keras.ops.convert_to_numpy(head))


def test_build_once_from_builds_metrics_and_stops_a_second_build():
    model = _tiny()
    model.compile("sgd", "mse", metrics=["mae"])
    build_once_from(model, (np.ones((2, 6, 6, 1), "float32"), np.zeros((2, 2), "float32")))
    assert model.built and [m.name for m in model.metrics] == ["loss", "compile_metrics"]
    assert model._compile_metrics.built
    assert model._maybe_symbolic_build() is None  # replaced: building again is a no-op
