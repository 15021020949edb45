r"""A torchvision-style per-image PIL pipeline, for comparison with sslx's input path.

  python experiments/pil_pipeline.py --npz=../shared/data/cifar10_5k.npz --workers=2

What PyTorch SSL code typically runs (torchvision transforms in DataLoader
worker processes), rebuilt with PIL and numpy so torch is not needed: for
each image and each of BYOL's two views, RandomResizedCrop(scale 0.08-1,
ratio 3/4-4/3) -> horizontal flip (p 0.5) -> colour jitter (brightness 0.4,
contrast 0.4, saturation 0.2, hue 0.1, random order, p 0.8) -> grayscale
(p 0.2) -> Gaussian blur (p 1.0 / 0.1, sigma 0.1-2) -> solarize (p 0 / 0.2)
-> float32 normalised array. `--workers` processes (DataLoader's
num_workers) each handle chunks of images. Prints images/s (source images,
two views each) as one JSON line.

Its sslx counterpart does the same work as tf.data crop + flip on the host
and the photometric ops in the jitted step: `experiments/augment_placement.py`
rows `end_to_end / device` (see experiments/README.md).
"""

import argparse
import json
import multiprocessing
import time

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

VIEWS = ({"blur": 1.0, "solarize": 0.0}, {"blur": 0.1, "solarize": 0.2})
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def random_resized_crop(img, rng, size):
  w, h = img.size
  area = w * h
  for _ in range(10):
    target = area * rng.uniform(0.08, 1.0)
    ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    cw, ch = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
      return img.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
  return img.resize((size, size), Image.BILINEAR)


def shift_hue(img, delta):
  hsv = np.array(img.convert("HSV"))
  hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(delta * 255)) % 256
  return Image.fromarray(hsv, "HSV").convert("RGB")


def color_jitter(img, rng):
  ops = [lambda x: ImageEnhance.Brightness(x).enhance(rng.uniform(0.6, 1.4)),
         lambda x: ImageEnhance.Contrast(x).enhance(rng.uniform(0.6, 1.4)),
         lambda x: ImageEnhance.Color(x).enhance(rng.uniform(0.8, 1.2)),
         lambda x: shift_hue(x, rng.uniform(-0.1, 0.1))]
  for i in rng.permutation(4):
    img = ops[i](img)
  return img


def view(img, rng, size, blur_p, solarize_p):
  img = random_resized_crop(img, rng, size)
  if rng.random() < 0.5:
    img = ImageOps.mirror(img)
  if rng.random() < 0.8:
    img = color_jitter(img, rng)
  if rng.random() < 0.2:
    img = ImageOps.grayscale(img).convert("RGB")
  if rng.random() < blur_p:
    img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.1, 2.0)))
  if rng.random() < solarize_p:
    img = ImageOps.solarize(img, threshold=128)
  return (np.asarray(img, np.float32) / 255.0 - MEAN) / STD


def process_chunk(args):
  images, seed = args
  rng = np.random.default_rng(seed)
  out = np.empty((len(images), 2) + images.shape[1:3] + (3,), np.float32)
  for i, x in enumerate(images):
    img = Image.fromarray(x if x.shape[-1] == 3 else np.repeat(x, 3, -1))
    for v, params in enumerate(VIEWS):
      out[i, v] = view(img, rng, x.shape[0], params["blur"], params["solarize"])
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--npz", required=True, help="uint8 x_train [N, H, W, C]")
  parser.add_argument("--workers", type=int, default=2)
  parser.add_argument("--chunk", type=int, default=64, help="images per task")
  parser.add_argument("--seconds", type=float, default=15.0)
  args = parser.parse_args()
  images = np.load(args.npz)["x_train"]
  chunks = [images[i:i + args.chunk] for i in range(0, len(images) - args.chunk + 1, args.chunk)]
  with multiprocessing.Pool(args.workers) as pool:
    pool.map(process_chunk, [(chunks[0], 0)] * args.workers)  # warm up the workers
    done, start, seed = 0, time.perf_counter(), 1
    while time.perf_counter() - start < args.seconds:
      tasks = [(chunks[(seed + k) % len(chunks)], seed + k) for k in range(4 * args.workers)]
      done += sum(len(r) for r in pool.imap_unordered(process_chunk, tasks))
      seed += len(tasks)
    elapsed = time.perf_counter() - start
  print(json.dumps({"what": "pil_per_image", "images_per_sec": round(done / elapsed, 1),
                    "workers": args.workers, "npz": args.npz, "image_size": images.shape[1]}))


if __name__ == "__main__":
  main()
