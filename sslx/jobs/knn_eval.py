"""kNN evaluation of a frozen encoder from any sslx checkpoint.

    python main.py --config=configs/knn_eval.py --workdir=/tmp/eval_knn \\
        --config.checkpoint=/tmp/byol

Features of centre crops (inference-mode BatchNorm) of the labelled train
subset form the memory bank; each test image is classified by weighted
voting of its k most cosine-similar bank images (sslx/evaluation/knn.py; Wu et al., 2018).
"""

import ml_collections

from sslx import errors
from sslx.evaluation import knn
from sslx.evaluation import transfer


def validate(config) -> None:
  problems = []
  if config.knn.k < 1:
    problems.append(f"config.knn.k={config.knn.k}; it must be >= 1.")
  if not config.knn.temperature > 0:
    problems.append(f"config.knn.temperature={config.knn.temperature}; it must be > 0.")
  if problems:
    raise errors.ConfigError.from_problems(problems)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  validate(config)
  if config.checkpoint == transfer.SCRATCH:
    raise errors.ConfigError("checkpoint=scratch trains an encoder; kNN evaluates a frozen one. "
                             "Use checkpoint=random for the untrained baseline.")
  s = transfer.setup(config, workdir, batch_sizes=(config.eval.batch_size,))
  info = s.info
  extract = transfer.feature_extractor(s, layer=config.eval.feature_layer,
                                       grid=config.eval.feature_grid)
  bank_x, bank_y = extract("train", batch_size=config.eval.batch_size, indices=s.subset)
  test_x, test_y = extract("test", batch_size=config.eval.batch_size)
  scores = knn.knn_accuracy(bank_x, bank_y, test_x, test_y, k=config.knn.k,
                            temperature=config.knn.temperature, num_classes=info.num_classes)
  results = dict(protocol="knn", **scores, **transfer.describe(config, s, len(bank_y)),
                 k=min(config.knn.k, len(bank_y)), temperature=config.knn.temperature)
  transfer.write_results(workdir, results, transfer.summary_line(
      f"kNN (k={results['k']}, T={config.knn.temperature})", results))
  return results
