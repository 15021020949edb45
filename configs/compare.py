r"""Compares finished runs in one Markdown table and one chart (sslx/jobs/compare.py).

  python main.py --config=configs/compare.py --workdir=/tmp/sslx_compare \
      --config.runs=/tmp/sslx_byol,/tmp/sslx_simclr,/tmp/sslx_moco,/tmp/sslx_rotnet

`runs`: pretraining workdirs and transfer-job workdirs (knn_eval,
linear_eval, finetune), comma-separated. Every cell is a number those runs
logged; nothing is re-evaluated.
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.job = "compare"
  c.runs = ""  # comma-separated workdirs
  c.title = ""  # the chart's title
  # Read by main.py before any job; the comparison computes nothing.
  c.cpu_devices = 1
  c.cpu_conv_backend = "eigen"
  return c
