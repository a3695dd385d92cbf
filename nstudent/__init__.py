"""nstudent: Self-training with Noisy Student in Keras 3 (TensorFlow or JAX backend)."""

__version__ = "0.1.0"
