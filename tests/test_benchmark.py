"""experiments/benchmark.py: its measurements come out with the fields and values they promise."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env


@pytest.mark.slow
def test_benchmark_reports_step_input_and_end_to_end(tmp_path, tfds_dir):
  out = tmp_path / "bench.jsonl"
  cmd = [sys.executable, "experiments/benchmark.py", "--config=configs/byol.py",
         f"--config.data.data_dir={tfds_dir}", "--config.model.width=0.125",
         "--config.batch_size=16", "--config.cpu_devices=2", "--seconds=0.5", "--warmup=1",
         f"--out={out}", f"--profile={tmp_path / 'trace'}"]
  env = subprocess_env()
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["what"] for r in rows] == ["step", "input", "end_to_end"]
  for r in rows:
    assert r["images_per_sec"] > 0 and r["batch_size"] == 16 and r["dtype"] == "float32"
    assert r["device"] == "2 x cpu" and r["model"].startswith("resnet10 x0.125")
    # It measures main.py's CPU setup: the device split (above) and Eigen convolutions.
    assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in r["xla_flags"]
  step = rows[0]
  # A BYOL step on 28 px digits at width 1/8: tens of MFLOPs per image, not 0 or TFLOPs.
  assert 1e-3 < step["gflops_per_image"] < 1.0
  assert step["compile_s"] > 0 and step["host_peak_rss_bytes"] > 0 and step["mfu"] is None
  assert rows[2]["bottleneck"] in ("step", "input")
  assert "| step |" in result.stdout  # the Markdown table
  # --profile: one traced step, its operation time split by kind of XLA operation.
  profile = next(json.loads(line) for line in result.stdout.splitlines()
                 if line.startswith('{"what": "profile"'))
  shares = [entry["share"] for entry in profile["top"]]
  assert profile["op_time_ms"] > 0 and all(0 < s <= 1 for s in shares) and sum(shares) <= 1.001
  assert shares == sorted(shares, reverse=True)
  assert any("fusion" in e["kind"] or "convolution" in e["kind"] for e in profile["top"])
  assert os.path.exists(profile["trace"])


def test_peak_flops_table():
  sys.path.insert(0, os.path.join(REPO, "experiments"))
  import benchmark  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  class Device:
    def __init__(self, kind):
      self.device_kind = kind

  assert benchmark.peak_flops(Device("NVIDIA H100 80GB HBM3"), "bfloat16") == 989e12
  assert benchmark.peak_flops(Device("TPU v4"), "bfloat16") == 275e12
  assert benchmark.peak_flops(Device("cpu"), "float32") is None


def _benchmark(tmp_path, *flags):
  out = tmp_path / "bench.jsonl"
  cmd = [sys.executable, "experiments/benchmark.py", f"--out={out}", "--seconds=0.1",
         "--warmup=1", *flags]
  result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
  rows = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
  return result, rows


def test_the_pytorch_comparison_refuses_a_step_it_does_not_mirror(tmp_path):
  result, rows = _benchmark(tmp_path, "--config=configs/byol.py", "--what=step,torch")
  assert result.returncode != 0 and rows == []
  assert "compares against BYOL's ResNet-18 with the CIFAR stem at 32 px" in result.stderr


@pytest.mark.slow
def test_the_pytorch_step_runs_beside_sslxs_and_gives_their_ratio(tmp_path):
  pytest.importorskip("torch")
  result, rows = _benchmark(tmp_path, "--config=configs/byol.py:cifar10",
                            "--config.batch_size=2", "--config.data.download=False",
                            "--what=step,torch")
  assert result.returncode == 0, result.stderr[-3000:]
  step, torch_row, ratio = rows
  assert [step["what"], torch_row["what"], ratio["what"]] == ["step", "torch", "vs_torch"]
  assert torch_row["images_per_sec"] > 0 and torch_row["threads"] >= 1
  assert ratio["ratio"] == pytest.approx(step["images_per_sec"] / torch_row["images_per_sec"],
                                         rel=0.05)
