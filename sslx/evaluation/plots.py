"""Pictures of a pretraining run, written as PNGs into its workdir.

  training_curves.png   loss, online-probe accuracy, effective rank (RankMe) and
                        learning rate against step, from WORKDIR/metrics.jsonl
  embedding_map.png     t-SNE (scikit-learn) of test-set features coloured by
                        class: the pretrained encoder beside the random one
  retrievals.png        test queries (left column) and their 8 nearest training
                        images by cosine similarity of pretrained features

matplotlib runs headless (Agg); nothing here needs a display.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

CURVES = (("loss", "loss"), ("probe_accuracy", "online probe accuracy"),
          ("effective_rank", "effective rank (RankMe)"), ("learning_rate", "learning rate"))
DPI = 100


def training_curves(records: Sequence[dict], path: str,
                    title: str = "") -> dict[str, tuple[list, list]]:
  """One panel per logged curve of CURVES (absent ones are skipped).

  Returns what was drawn: {curve: (steps, values)}.
  """
  drawn = [(key, label) for key, label in CURVES if any(key in r for r in records)]
  fig, axes = plt.subplots(1, max(1, len(drawn)), figsize=(4 * max(1, len(drawn)), 3.2),
                           squeeze=False)
  plotted = {}
  for ax, (key, label) in zip(axes[0], drawn):
    points = [(r["step"], r[key]) for r in records if key in r and np.isfinite(r[key])]
    steps, values = (list(t) for t in zip(*points)) if points else ([], [])
    plotted[key] = (steps, values)
    ax.plot(steps, values, marker="o", markersize=2.5, linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(label)
    ax.set_title(label, fontsize=10)
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  save_figure(fig, path)
  return plotted


def tsne_2d(features: np.ndarray, seed: int = 0, max_points: int = 2000) -> tuple[np.ndarray,
                                                                                np.ndarray]:
  """(2-D t-SNE coordinates, indices of the rows used): at most `max_points`, seeded."""
  from sklearn.manifold import TSNE  # pylint: disable=import-outside-toplevel
  rows = np.arange(len(features))
  if len(rows) > max_points:
    rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
  x = features[rows].astype(np.float64)
  x = (x - x.mean(0)) / (x.std(0) + 1e-6)
  perplexity = float(min(30.0, max(2.0, (len(rows) - 1) / 3)))
  coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(x)
  return coords, rows


def embedding_map(features: dict[str, np.ndarray], labels: np.ndarray, path: str, *,
                  seed: int = 0, title: str = "", max_points: int = 2000,
                  class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """A t-SNE panel per encoder (same test images), coloured by class; returns the coordinates."""
  fig, axes = plt.subplots(1, len(features), figsize=(5 * len(features), 5), squeeze=False)
  coordinates = {}
  cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
  for ax, (name, feats) in zip(axes[0], features.items()):
    coords, rows = tsne_2d(feats, seed, max_points)
    coordinates[name] = coords
    ax.scatter(coords[:, 0], coords[:, 1], c=labels[rows], cmap=cmap, s=4,
               vmin=0, vmax=max(9, labels.max()))
    ax.set_title(f"{name} (t-SNE of {len(rows)} test images)", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
  name = lambda c: class_names[c] if class_names is not None and c < len(class_names) else str(c)
  handles = [plt.Line2D([], [], marker="o", linestyle="", color=cmap(c / max(9, labels.max())),
                        label=name(c)) for c in np.unique(labels)]
  fig.legend(handles=handles, loc="center right", title="class", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout(rect=(0, 0, 0.93, 1))
  save_figure(fig, path)
  return coordinates


def nearest_neighbours(bank: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
  """Indices [Q, k] of each query's k most cosine-similar bank rows, most similar first."""
  normalise = lambda x: x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
  similarity = normalise(queries) @ normalise(bank).T
  return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def retrieval_grid(query_images: np.ndarray, bank_images: np.ndarray, neighbours: np.ndarray,
                   path: str, *, query_labels=None, bank_labels=None, title: str = "",
                   class_names: Sequence[str] | None = None) -> None:
  """Rows: a query image, then its neighbours; a neighbour of another class gets a red frame.

  With `class_names` (and labels), each row is labelled with its query's class.
  """
  rows, k = neighbours.shape
  fig, axes = plt.subplots(rows, k + 1, figsize=(1.1 * (k + 1), 1.1 * rows + 0.4),
                           squeeze=False)
  for r in range(rows):
    images = [query_images[r]] + [bank_images[i] for i in neighbours[r]]
    for c, image in enumerate(images):
      ax = axes[r, c]
      ax.imshow(_displayable(image), cmap="gray" if image.shape[-1] == 1 else None,
                vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      wrong = (c > 0 and query_labels is not None and bank_labels is not None
               and bank_labels[neighbours[r, c - 1]] != query_labels[r])
      if c == 0 and class_names is not None and query_labels is not None:
        ax.set_ylabel(str(class_names[query_labels[r]])[:14], fontsize=7)
      for spine in ax.spines.values():
        spine.set_edgecolor("red" if wrong else ("black" if c == 0 else "lightgrey"))
        spine.set_linewidth(2.5 if wrong or c == 0 else 0.5)
  axes[0, 0].set_title("query", fontsize=8)
  for c in range(1, k + 1):
    axes[0, c].set_title(f"#{c}", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  save_figure(fig, path)


def _displayable(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    return image[..., 0]
  return image


def save_figure(fig, path: str) -> None:
  """Writes `fig` as a PNG at `path` (creating its folder) and frees it."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


METRICS_FILE = "metrics.jsonl"
FILES = {"curves": "training_curves.png", "embedding_map": "embedding_map.png",
         "retrievals": "retrievals.png"}


def draw_run(config, workdir: str, features: dict) -> dict[str, str]:
  """Every picture of a finished pretraining run that its data allows; returns their paths.

  `features` is the final evaluation's {encoder name: {'train': (x, y),
  'test': (x, y)}} (empty when it did not run: then only the curves).
  """
  from sslx.core.progress import MetricsLog  # pylint: disable=import-outside-toplevel
  c = config.plots
  name = f"{config.method} on {config.data.dataset}"
  paths = {}
  records = MetricsLog.read(os.path.join(workdir, METRICS_FILE))
  if records:
    paths["curves"] = os.path.join(workdir, FILES["curves"])
    training_curves(records, paths["curves"], title=name)
  if "pretrained" in features:
    test = {n: f["test"][0] for n, f in features.items()}
    labels = features["pretrained"]["test"][1]
    paths["embedding_map"] = os.path.join(workdir, FILES["embedding_map"])
    from sslx import data  # pylint: disable=import-outside-toplevel
    names = data.class_names(config.data)
    embedding_map(test, labels, paths["embedding_map"], seed=config.seed,
                  title=f"{name}: test features", max_points=c.tsne_max_points,
                  class_names=names)
    paths["retrievals"] = os.path.join(workdir, FILES["retrievals"])
    _retrievals(config, features["pretrained"], paths["retrievals"], name, names)
  return paths


def _retrievals(config, feats, path: str, name: str, class_names=None) -> None:
  from sslx import data  # pylint: disable=import-outside-toplevel
  c = config.plots
  (bank_x, bank_y), (test_x, test_y) = feats["train"], feats["test"]
  queries = np.sort(np.random.default_rng(config.seed).choice(
      len(test_x), min(c.retrieval_queries, len(test_x)), replace=False))
  neighbours = nearest_neighbours(bank_x, test_x[queries], min(c.retrieval_neighbours,
                                                                len(bank_x)))
  used = np.unique(neighbours)  # sorted: the order the images are read in
  # The bank's rows are the evaluated train examples: a sample of the split, or all of it.
  rows = feats.get("train_indices")
  query_images = _images(data, config.data, "test", queries)
  bank_images = _images(data, config.data, "train", used if rows is None else rows[used])
  retrieval_grid(query_images, bank_images, np.searchsorted(used, neighbours), path,
                 query_labels=test_y[queries], bank_labels=bank_y[used],
                 title=f"{name}: nearest training images (cosine, pretrained features)",
                 class_names=class_names)


def _images(data, data_config, split: str, indices: np.ndarray) -> np.ndarray:
  """The centre-cropped uint8 images at sorted `indices` of 'train' or 'test', in that order."""
  batches = data.make_eval_iterator(data_config, split, batch_size=256, indices=indices,
                                    process_index=0, process_count=1)
  images = [b["image"][b["mask"]] for b in batches]
  return np.concatenate(images)
