"""Encoders that leave sslx: torch (torchvision/timm) ResNet state_dicts and a portable format.

  torch_resnet  sslx ResNet variables <-> torch state_dicts, both ways (export, and
                ImageNet-pretrained weights as a fine-tuning start)
  portable      msgpack variables + a JSON description, readable without sslx

The user-facing API is `sslx.load_encoder` (sslx/encoder.py) and the `export` job.
"""
