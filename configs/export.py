r"""Exports a pretrained encoder: portable msgpack + JSON, and/or a torchvision state_dict.

  python main.py --config=configs/export.py --workdir=/tmp/sslx_byol_export \
      --config.checkpoint=/tmp/sslx_byol
  python main.py --config=configs/export.py --workdir=/tmp/sslx_byol_export \
      --config.checkpoint=/tmp/sslx_byol --config.format=all     # also resnet_torchvision.pt

See sslx/jobs/export.py. In Python the same is three lines:
  encoder = sslx.load_encoder('/tmp/sslx_byol'); encoder.save_portable(dir);
  encoder.save_torchvision(path)
"""

import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.job = "export"
  # A pretraining workdir, WORKDIR/checkpoints/STEP, a portable export or a .pt state_dict.
  c.checkpoint = ml_collections.config_dict.placeholder(str)
  c.checkpoint_step = ml_collections.config_dict.placeholder(int)
  c.format = "portable"  # 'portable', 'torchvision' (needs torch) or 'all'
  c.cpu_devices = 1
  c.cpu_conv_backend = "eigen"
  return c
