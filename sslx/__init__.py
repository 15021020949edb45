"""sslx: self-supervised visual representation learning and transfer in JAX/Flax.

    import sslx
    encoder = sslx.load_encoder("/tmp/sslx_byol")   # a pretraining workdir (or a step, an export)
    features = encoder(images)                      # [N, H, W, 3] images -> [N, D] features
"""

__version__ = "0.1.0"
__all__ = ["load_encoder", "Encoder"]


def __getattr__(name):
  # Lazy, so that `import sslx.errors` (main.py, before it configures logging)
  # does not import jax.
  if name in __all__:
    from sslx import encoder  # pylint: disable=import-outside-toplevel
    return getattr(encoder, name)
  raise AttributeError(f"module 'sslx' has no attribute {name!r}")
