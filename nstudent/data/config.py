"""How training batches are made: resolution, batch size and the input noise.

Its own module, free of TensorFlow, so device-side training (which needs no
tf.data) can use it on a machine without TensorFlow.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class InputConfig:
    image_size: int
    batch_size: int
    randaugment_layers: int = 2
    randaugment_magnitude: float = 9.0
    randaugment_impl: str = "keras_cv"
    random_flip: bool = True
    crop_padding: int = 0  # pixels of reflect padding before a random crop
    cache: bool = True
    shuffle_buffer: int = 16384
