"""sRGB <-> CIE Lab (D65 white, 2 degree observer) in JAX, for colorization on device.

The same formulas as scikit-image's `rgb2lab` / `lab2rgb` (tested against
them): the sRGB transfer curve (IEC 61966-2-1), the sRGB-to-XYZ matrix, and
CIE 1976 L*a*b* with the linear segment below (6/29)^3. Images are float in
[0, 1], [..., 3]; L is in [0, 100], a and b roughly in [-110, 110].
"""

import jax.numpy as jnp

# sRGB (linear) -> XYZ, D65 (scikit-image's xyz_from_rgb).
XYZ_FROM_RGB = jnp.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]], jnp.float32)
RGB_FROM_XYZ = jnp.linalg.inv(XYZ_FROM_RGB)
WHITE_D65 = jnp.array([0.95047, 1.0, 1.08883], jnp.float32)
_EPSILON = 0.008856  # (6/29)^3
_KAPPA = 7.787  # (29/6)^2 / 3


def rgb_to_lab(rgb: jnp.ndarray) -> jnp.ndarray:
  """[..., 3] sRGB in [0, 1] -> [..., 3] (L, a, b)."""
  rgb = jnp.asarray(rgb, jnp.float32)
  linear = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
  xyz = linear @ XYZ_FROM_RGB.T / WHITE_D65
  f = jnp.where(xyz > _EPSILON, jnp.cbrt(jnp.maximum(xyz, _EPSILON)), _KAPPA * xyz + 16 / 116)
  lightness = 116 * f[..., 1] - 16
  a = 500 * (f[..., 0] - f[..., 1])
  b = 200 * (f[..., 1] - f[..., 2])
  return jnp.stack([lightness, a, b], axis=-1)


def lab_to_rgb(lab: jnp.ndarray, clip: bool = True) -> jnp.ndarray:
  """[..., 3] (L, a, b) -> sRGB, clipped to [0, 1] unless `clip=False` (to test the gamut)."""
  lab = jnp.asarray(lab, jnp.float32)
  fy = (lab[..., 0] + 16) / 116
  fx = lab[..., 1] / 500 + fy
  fz = jnp.maximum(fy - lab[..., 2] / 200, 0.0)  # scikit-image clips negative z to 0
  f = jnp.stack([fx, fy, fz], axis=-1)
  xyz = jnp.where(f ** 3 > _EPSILON, f ** 3, (f - 16 / 116) / _KAPPA) * WHITE_D65
  linear = xyz @ RGB_FROM_XYZ.T
  safe = jnp.maximum(linear, 0.0031308)
  rgb = jnp.where(linear > 0.0031308, 1.055 * safe ** (1 / 2.4) - 0.055, 12.92 * linear)
  return jnp.clip(rgb, 0.0, 1.0) if clip else rgb
