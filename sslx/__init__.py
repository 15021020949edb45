"""sslx: self-supervised visual representation learning and transfer in JAX/Flax."""

__version__ = "0.1.0"
