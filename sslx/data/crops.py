"""Random resized crops and flips of every view, on the host, from stateless Philox numbers.

The crop windows follow torchvision's RandomResizedCrop (10 attempts, then a
centre crop), vectorised over a batch; one `tf.image.crop_and_resize` per view
group cuts them. The numbers of view v of stream position i come from one
Philox key at counter (i * V + v) * 11, so they depend on (key, i, v) only.
"""

from __future__ import annotations

import math

from sslx.data import views as views_lib
from sslx.data.host_tf import tf

# torchvision's RandomResizedCrop and SimCLR try 10 random windows before
# falling back to a center crop.
_CROP_ATTEMPTS = 10
# Uniforms per view: (area, aspect, top, left) per attempt and one for the
# flip, rounded up to whole Philox blocks of 4 so that view (i, v) starts at
# counter (i * V + v) * _DRAWS_PER_VIEW / 4.
_DRAWS_PER_VIEW = 44
_PHILOX = 1  # tf.random.Algorithm.PHILOX, as the raw ops want it.


class ViewSampler:
  """Crop boxes of every crop of every view group, from per-(example, crop) Philox numbers."""

  def __init__(self, key: tf.Tensor, groups: list[views_lib.ViewGroup]):
    # Key and counter as tf.random.stateless_uniform derives them from a seed;
    # the low counter word (0 here) is then advanced to the view's block.
    self._key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=key)
    self._counter_hi = tf.bitcast(counter, tf.int64)[1]
    self._groups = groups
    crops = [g for g in groups for _ in range(g.num_crops)]  # one entry per crop number
    self._views = len(crops)
    col = lambda xs: tf.constant(xs, tf.float32)[:, None]  # [V, 1]
    self._area = (col([g.area[0] for g in crops]),
                  col([g.area[1] for g in crops]))
    self._log_aspect = (col([math.log(g.aspect[0]) for g in crops]),
                        col([math.log(g.aspect[1]) for g in crops]))
    self._aspect = (col([g.aspect[0] for g in crops])[:, 0],
                    col([g.aspect[1] for g in crops])[:, 0])
    self._flip_prob = col([g.flip_prob for g in crops])[:, 0]

  def draws(self, first_index: tf.Tensor, count: int | tf.Tensor) -> tf.Tensor:
    """Uniforms [count, V, 44] of examples first_index, first_index + 1, ..."""
    offset = (tf.cast(first_index, tf.int64) * self._views
              * (_DRAWS_PER_VIEW // 4))
    counter = tf.bitcast(tf.stack([offset, self._counter_hi]), tf.uint64)
    u = tf.raw_ops.StatelessRandomUniformV2(
        shape=tf.stack([count * self._views * _DRAWS_PER_VIEW]), key=self._key,
        counter=counter, alg=_PHILOX)
    return tf.reshape(u, [-1, self._views, _DRAWS_PER_VIEW])

  def crop(self, images: tf.Tensor, u: tf.Tensor) -> dict[str, tf.Tensor]:
    """Random resized crops + flips: [N, H, W, C] -> {group: uint8 [N, n, S, S, C]}.

    One `crop_and_resize` per group cuts all of its crops of the batch.
    """
    shape = tf.shape(images)
    boxes = self._boxes(shape[1], shape[2], u)  # [N, V, 4]
    n = shape[0]
    out, first = {}, 0
    for g in self._groups:
      group_boxes = boxes[:, first:first + g.num_crops]
      first += g.num_crops
      crops = tf.image.crop_and_resize(
          images, tf.reshape(group_boxes, [-1, 4]),
          tf.repeat(tf.range(n), g.num_crops), [g.crop_size, g.crop_size],
          method="bilinear")
      crops = tf.reshape(to_uint8(crops), tf.concat(
          [[n, g.num_crops, g.crop_size, g.crop_size], shape[3:]], 0))
      crops.set_shape([None, g.num_crops, g.crop_size, g.crop_size, images.shape[-1]])
      out[g.name] = crops
    return out

  def _boxes(self, height: tf.Tensor, width: tf.Tensor,
             u: tf.Tensor) -> tf.Tensor:
    """torchvision's RandomResizedCrop.get_params, vectorised.

    Args:
      height: image height (int32 scalar).
      width: image width (int32 scalar).
      u: uniforms [N, V, 44].

    Returns:
      Normalised crop_and_resize boxes [N, V, 4] (y1, x1, y2, x2), x1 and x2
      swapped for flipped views.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    att = tf.reshape(u[..., :4 * _CROP_ATTEMPTS],
                     [-1, self._views, _CROP_ATTEMPTS, 4])
    lo, hi = self._area
    target_area = h * w * (lo + (hi - lo) * att[..., 0])
    lo, hi = self._log_aspect
    aspect = tf.exp(lo + (hi - lo) * att[..., 1])
    cw = tf.round(tf.sqrt(target_area * aspect))
    ch = tf.round(tf.sqrt(target_area / aspect))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    # The first attempt that fits, as torchvision's loop would take it.
    pick = tf.argmax(tf.cast(ok, tf.int32), axis=-1, output_type=tf.int32)
    take = lambda x: tf.gather(x, pick, axis=2, batch_dims=2)  # [N, V]
    ch, cw = take(ch), take(cw)
    top = tf.floor(take(att[..., 2]) * (h - ch + 1))
    left = tf.floor(take(att[..., 3]) * (w - cw + 1))
    # Fallback after every attempt failed: the largest center crop with the
    # aspect ratio clamped into the view's range (torchvision).
    lo, hi = self._aspect
    fb_w = tf.where(w / h > hi, tf.round(h * hi), w)  # [V]
    fb_h = tf.where(w / h < lo, tf.round(w / lo), h)
    any_ok = tf.reduce_any(ok, axis=-1)
    ch = tf.where(any_ok, ch, fb_h)
    cw = tf.where(any_ok, cw, fb_w)
    top = tf.where(any_ok, top, tf.floor((h - ch) / 2))
    left = tf.where(any_ok, left, tf.floor((w - cw) / 2))
    # Guard float edge cases (u close to 1) so the window is inside the image.
    ch = tf.clip_by_value(ch, 1, h)
    cw = tf.clip_by_value(cw, 1, w)
    top = tf.clip_by_value(top, 0, h - ch)
    left = tf.clip_by_value(left, 0, w - cw)
    # Boxes through the first and last pixel centres of the window, so that
    # samples never leave it (and a full-size window is the identity).
    dy = tf.maximum(h - 1, 1)
    dx = tf.maximum(w - 1, 1)
    x1, x2 = left / dx, (left + cw - 1) / dx
    flip = u[..., -1] < self._flip_prob
    x1, x2 = tf.where(flip, x2, x1), tf.where(flip, x1, x2)
    return tf.stack([top / dy, x1, (top + ch - 1) / dy, x2], axis=-1)


def to_uint8(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)
