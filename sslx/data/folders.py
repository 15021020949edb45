"""Image-folder datasets (`folder:/path`): finding the images, their classes and splits.

Layouts: PATH/train/<class>/* with an optional PATH/test|val|validation/<class>/*,
PATH/<class>/* (train only), or images directly in PATH (unlabelled). Files that
are not whole JPEG or PNG images are skipped at scan time and named.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os

from absl import logging
import numpy as np

from sslx.errors import ConfigError, DatasetNotAvailableError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_TEST_NAMES = ("test", "val", "validation")


@dataclasses.dataclass(frozen=True)
class Folder:
  """A folder dataset's classes and, per split, its image paths and labels."""
  classes: tuple[str, ...] | None  # None: unlabelled
  splits: dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (paths, labels)


def _images_in(directory: str) -> list[str]:
  return sorted(
      os.path.join(directory, f) for f in os.listdir(directory)
      if f.lower().endswith(IMAGE_EXTENSIONS)
      and os.path.isfile(os.path.join(directory, f)))


# A whole JPEG starts with SOI (FF D8 FF) and ends with EOI (FF D9), which
# cannot occur inside its entropy-coded data (an FF there is followed by 00 or
# a restart marker), so an EOI near the end means the file was not cut short.
# A whole PNG starts with its signature and ends with the IEND chunk.
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
_TAIL_BYTES = 1024  # room for padding or metadata some cameras append after EOI


def _whole_image(path: str) -> bool:
  """True if `path` is a JPEG or PNG whose start and end are both there (two small reads)."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
      f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
      tail = f.read()
  except OSError:
    return False
  if head.startswith(_JPEG_START):
    return _JPEG_END in tail
  return head.startswith(_PNG_START) and _PNG_END in tail


def _drop_broken_images(paths: list[str], labels: list[int], directory: str):
  """Keeps the whole images; names the others in one warning (never a mid-run crash).

  A truncated or non-image file would otherwise stop training with a
  TensorFlow traceback that does not name it, hours into a run. Checking
  costs two small reads per file (threads: it is I/O).
  """
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    whole = list(pool.map(_whole_image, paths))
  if all(whole):
    return paths, labels
  broken = [p for p, ok in zip(paths, whole) if not ok]
  shown = ", ".join(broken[:10]) + (f", ... ({len(broken) - 10} more)" if len(broken) > 10 else "")
  logging.warning(
      "Skipping %d of %d files in %s that are not whole JPEG/PNG images (truncated, empty "
      "or another format): %s", len(broken), len(paths), directory, shown)
  return ([p for p, ok in zip(paths, whole) if ok],
          [label for label, ok in zip(labels, whole) if ok])


def _subdirs(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory)
                if os.path.isdir(os.path.join(directory, d))
                and not d.startswith("."))


def scan(path: str) -> Folder:
  """Finds the images of a folder dataset (memoised per path)."""
  if not os.path.isdir(path):
    raise DatasetNotAvailableError(
        f"Image folder {path} does not exist or is not a directory. "
        f"{_FOLDER_LAYOUTS}")
  return _scan_cached(os.path.abspath(path))


_FOLDER_LAYOUTS = (
    "Valid layouts (images .jpg/.jpeg/.png): PATH/train/<class>/* with an "
    "optional PATH/test|val|validation/<class>/*; PATH/<class>/* (train only); "
    "or images directly in PATH (unlabelled, train only).")


@functools.lru_cache(maxsize=4)
def _scan_cached(path: str) -> Folder:
  subdirs = _subdirs(path)
  if "train" in subdirs:
    split_dirs = {"train": os.path.join(path, "train")}
    for name in _TEST_NAMES:
      if name in subdirs:
        split_dirs["test"] = os.path.join(path, name)
        break
  else:
    split_dirs = {"train": path}
  train_dir = split_dirs["train"]
  class_names = [d for d in _subdirs(train_dir)
                 if _images_in(os.path.join(train_dir, d))]
  loose = _images_in(train_dir)
  if class_names and loose:
    raise ConfigError(
        f"Image folder {train_dir} has both images and class subfolders "
        f"({loose[0]}, ... and {class_names[0]}/...); use one. "
        f"{_FOLDER_LAYOUTS}")
  classes = tuple(class_names) if class_names else None
  splits = {}
  for split, directory in split_dirs.items():
    paths, labels = [], []
    if classes is None:
      paths = _images_in(directory)
      labels = [-1] * len(paths)
    else:
      extra = sorted(set(d for d in _subdirs(directory)
                         if _images_in(os.path.join(directory, d)))
                     - set(classes))
      if extra:
        raise ConfigError(
            f"Image folder {directory} has classes {extra} that "
            f"{train_dir} lacks; train classes: {list(classes)}.")
      for label, c in enumerate(classes):
        d = os.path.join(directory, c)
        files = _images_in(d) if os.path.isdir(d) else []
        paths += files
        labels += [label] * len(files)
    paths, labels = _drop_broken_images(paths, labels, directory)
    if not paths:
      raise ConfigError(f"Image folder {directory} ({split} split) has no "
                        f"images. {_FOLDER_LAYOUTS}")
    splits[split] = (np.asarray(paths), np.asarray(labels, np.int32))
  return Folder(classes, splits)
