"""scikit-learn's 1,797 digits (8x8, 17 grey levels) as an npz dataset of sslx, 80/20 stratified.

    python experiments/sklearn_digits_npz.py --out=/tmp/skdigits/sklearn_digits.npz
    python main.py --config=configs/knn_eval.py --workdir=/tmp/eval_sk \
        --config.checkpoint=/tmp/sslx_byol --config.data.dataset=npz:/tmp/skdigits/sklearn_digits.npz

Another digit set than the quick starts' mnist5k, stored as npz: what issue 45
measured the evaluators' preprocessing on (experiments/README.md).
"""

import argparse
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  digits = load_digits()
  x = np.round(digits.images / 16.0 * 255).astype(np.uint8)[..., None]
  y = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y,
                                                      random_state=0)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  np.savez(args.out, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  print(f"{args.out}: {len(x_train)} train, {len(x_test)} test digits of 8x8 px")


if __name__ == "__main__":
  main()
