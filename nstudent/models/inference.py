"""An inference-only copy of a network: batch norm folded into its convolutions.

Keras 3 runs batch norm in inference mode as separate multiply and add ops over
every activation (TensorFlow's fused kernel is not used), and the squeeze-excite
1x1 convolutions run on 1x1 feature maps through the convolution machinery.
For pseudo-labeling, which meets more images than any other stage, the copy
made here computes the same function with fewer, larger ops: each conv -> BN pair
becomes one conv with a bias (W * gamma / sqrt(var + eps), beta - mean * that),
squeeze-excite convs become Dense layers, dropout and stochastic depth go.
Measured in bench/pseudo_label_scale.py (BENCHMARKS.md).
"""

import keras
import numpy as np
from keras import layers

from nstudent.keras_private import consumers, single_source


class _Passthrough(layers.Layer):
    """Stands where a folded batch norm or a dropout layer was."""

    def call(self, inputs, training=None, mask=None):
        return inputs


def _folded_pairs(model):
    """{conv layer name: the BN layer that only it feeds}."""
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization):
            continue
        source = single_source(layer)
        if (isinstance(source, (layers.Conv2D, layers.DepthwiseConv2D))
                and not source.use_bias and consumers(source) == 1
                and source.activation in (None, keras.activations.linear)):
            pairs[source.name] = layer
    return pairs


def _is_pointwise_on_pooled(layer):
    """A 1x1 conv whose input is 1x1 (squeeze-excite): a Dense layer computes it."""
    return (type(layer) is layers.Conv2D and tuple(layer.kernel_size) == (1, 1)
            and tuple(layer.strides) == (1, 1) and layer.input.shape[1:3] == (1, 1))


def inference_network(model):
    """A copy of `model` for inference only (no training argument matters): same
    outputs as model(x, training=False) up to float rounding, fewer ops."""
    pairs = _folded_pairs(model)
    folded = {bn.name for bn in pairs.values()}

    def clone(layer):
        if layer.name in folded or isinstance(layer, layers.Dropout):
            return _Passthrough(name=layer.name)
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        elif _is_pointwise_on_pooled(layer):
            return layers.Dense(layer.filters, activation=layer.activation,
                                dtype=layer.dtype_policy, name=layer.name)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        target = copy.get_layer(layer.name)
        if layer.name in folded or not layer.weights:
            continue
        weights = layer.get_weights()
        if layer.name in pairs:
            bn = pairs[layer.name]
            gamma, beta, mean, var = (np.asarray(w, np.float64) for w in _bn_weights(bn))
            scale = gamma / np.sqrt(var + bn.epsilon)
            kernel = np.asarray(weights[0], np.float64)
            if isinstance(layer, layers.DepthwiseConv2D):  # [kh, kw, channels, multiplier]
                kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
            else:
                kernel = kernel * scale
            weights = [kernel.astype(np.float32), (beta - mean * scale).astype(np.float32)]
        elif isinstance(target, layers.Dense) and weights[0].ndim == 4:
            weights[0] = weights[0][0, 0]
        target.set_weights(weights)
    return copy


def _bn_weights(bn):
    """gamma, beta, moving mean, moving variance, with the defaults for absent ones."""
    values = {v.name: w for v, w in zip(bn.weights, bn.get_weights())}
    n = values["moving_mean"].shape[0]
    return (values.get("gamma", np.ones(n)), values.get("beta", np.zeros(n)),
            values["moving_mean"], values["moving_variance"])
