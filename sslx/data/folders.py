"""Image-folder datasets (`folder:/path`): finding the images, their classes and splits.

Layouts: PATH/train/<class>/* with an optional PATH/test|val|validation/<class>/*,
PATH/<class>/* (the commonest: no split), or images directly in PATH
(unlabelled). A labelled folder without a test split gets one: a
deterministic, stratified `holdout_fraction` of each class's images (10% by
default, `config.data.holdout_fraction`), the same for every run and job.

Images: JPEG, PNG, BMP, GIF (its first frame), WebP and TIFF. Files that are
not whole images of those formats, files of other kinds and empty class
folders are named in one warning each, with their counts; nothing is dropped
silently.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os

from absl import logging
import numpy as np

from sslx.data import stratify
from sslx.errors import ConfigError, DatasetNotAvailableError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# TensorFlow decodes all but TIFF; TIFF goes through Pillow (sslx/data/datasets.py).
TIFF_EXTENSIONS = (".tif", ".tiff")
# Files that commonly sit beside images and are not worth a warning.
_QUIET = (".ds_store", "thumbs.db", "desktop.ini")
DEFAULT_HOLDOUT_FRACTION = 0.1
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


def _other_files(directory: str) -> list[str]:
  """Files of `directory` that are not images by their extension (nor hidden / OS files)."""
  return sorted(f for f in os.listdir(directory)
                if os.path.isfile(os.path.join(directory, f)) and not f.startswith(".")
                and not f.lower().endswith(IMAGE_EXTENSIONS) and f.lower() not in _QUIET)


def _warn_skipped(kind: str, names: list[str], where: str) -> None:
  if names:
    shown = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
    logging.warning("Skipping %d %s in %s: %s", len(names), kind, where, shown)


# A whole JPEG starts with SOI (FF D8 FF) and ends with EOI (FF D9), which
# cannot occur inside its entropy-coded data (an FF there is followed by 00 or
# a restart marker), so an EOI near the end means the file was not cut short.
# A whole PNG starts with its signature and ends with the IEND chunk. The other
# formats are checked by their signature alone.
_JPEG_START, _JPEG_END = b"\xff\xd8\xff", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND"
_SIGNATURES = (b"BM", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")  # BMP, GIF, TIFF
_TAIL_BYTES = 1024  # room for padding or metadata some cameras append after EOI


def _whole_image(path: str) -> bool:
  """True if `path` is an image of a readable format whose start (and, for JPEG and PNG,
  end) is there: two small reads."""
  try:
    with open(path, "rb") as f:
      head = f.read(12)
      f.seek(max(0, os.fstat(f.fileno()).st_size - _TAIL_BYTES))
      tail = f.read()
  except OSError:
    return False
  if head.startswith(_JPEG_START):
    return _JPEG_END in tail
  if head.startswith(_PNG_START):
    return _PNG_END in tail
  if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
    return True
  return head.startswith(_SIGNATURES)


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
      "Skipping %d of %d files in %s that are not whole images (truncated, empty or not "
      "JPEG, PNG, BMP, GIF, WebP or TIFF inside): %s", len(broken), len(paths), directory, shown)
  return ([p for p, ok in zip(paths, whole) if ok],
          [label for label, ok in zip(labels, whole) if ok])


def _subdirs(directory: str) -> list[str]:
  return sorted(d for d in os.listdir(directory)
                if os.path.isdir(os.path.join(directory, d))
                and not d.startswith("."))


def scan(path: str, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION) -> Folder:
  """Finds the images of a folder dataset (memoised per path and holdout fraction).

  `holdout_fraction`: the share of each class held out as the test split of a
  labelled folder that has none (0: no test split).
  """
  if not os.path.isdir(path):
    raise DatasetNotAvailableError(
        f"Image folder {path} does not exist or is not a directory. "
        f"{_FOLDER_LAYOUTS}")
  if not 0.0 <= holdout_fraction < 1.0:
    raise ConfigError(f"config.data.holdout_fraction={holdout_fraction}; it must be in [0, 1).")
  folder = _scan_cached(os.path.abspath(path))
  if "test" in folder.splits or folder.classes is None or not holdout_fraction:
    return folder
  return _hold_out(os.path.abspath(path), float(holdout_fraction))


_FOLDER_LAYOUTS = (
    "Valid layouts (images .jpg/.jpeg/.png/.bmp/.gif/.webp/.tif): PATH/train/<class>/* with "
    "an optional PATH/test|val|validation/<class>/*; PATH/<class>/* (a test split is held "
    "out); or images directly in PATH (unlabelled, train only).")


@functools.lru_cache(maxsize=8)
def _hold_out(path: str, fraction: float) -> Folder:
  """The folder with a stratified `fraction` of each class moved to a test split.

  Which images: a permutation of each class seeded by the class alone
  (`stratify.stratified_subset`, seed 0), so every run and every job of the
  folder sees the same split, whatever its own seed.
  """
  folder = _scan_cached(path)
  paths, labels = folder.splits["train"]
  held = stratify.stratified_subset(labels, fraction=fraction, seed=0)
  kept = np.setdiff1d(np.arange(len(labels)), held)
  if not len(kept):
    raise ConfigError(f"Image folder {path} is too small to hold out a test split: "
                      f"{len(labels)} images in {len(folder.classes)} classes.")
  logging.info("folder:%s has no test split: holding out %.0f%% of each class (%d of %d "
               "images) as its test split (config.data.holdout_fraction).", path,
               100 * fraction, len(held), len(labels))
  return Folder(folder.classes, {"train": (paths[kept], labels[kept]),
                                 "test": (paths[held], labels[held])})


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
  _warn_skipped("class folder(s) without images", [
      d for d in _subdirs(train_dir)
      if d not in class_names and not _subdirs(os.path.join(train_dir, d))], train_dir)
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
      _warn_skipped("file(s) that are not images", _other_files(directory), directory)
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
        if os.path.isdir(d):
          _warn_skipped("file(s) that are not images", _other_files(d), d)
    paths, labels = _drop_broken_images(paths, labels, directory)
    if not paths:
      raise ConfigError(f"Image folder {directory} ({split} split) has no "
                        f"images. {_FOLDER_LAYOUTS}")
    splits[split] = (np.asarray(paths), np.asarray(labels, np.int32))
  return Folder(classes, splits)
