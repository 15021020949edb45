"""Classification metrics on host arrays."""

import numpy as np


def top1_top5(scores, labels, num_classes: int) -> dict[str, float]:
  """Top-1 (and top-5 where there are more than 5 classes) accuracy of class scores [N, C]."""
  ranked = np.argsort(-np.asarray(scores), axis=-1, kind="stable")
  labels = np.asarray(labels)
  result = {"top1": float(np.mean(ranked[:, 0] == labels))}
  if num_classes > 5:
    result["top5"] = float(np.mean(np.any(ranked[:, :5] == labels[:, None], axis=1)))
  return result
