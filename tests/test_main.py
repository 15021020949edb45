"""End to end: main.py pretrains, checkpoints, resumes, evaluates; bad input fails cleanly."""

import json
import logging
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import compare as compare_config_lib
from configs import knn_eval as knn_eval_config
from sslx.core import checkpointing
from sslx import errors
from sslx.jobs import compare as compare_job
from sslx.jobs import knn_eval
from sslx.jobs import pretrain
from conftest import REPO, main_config, run_main as _main, subprocess_env, tiny_config

@pytest.mark.slow
def test_main_trains_checkpoints_evaluates_and_resumes(tmp_path, tfds_dir, caplog):
  workdir = str(tmp_path / "run")
  first = _main(workdir, tfds_dir, "--config.train_steps=4", "--config.cpu_devices=2",
                "--config.eval.max_train_examples=512")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "kNN (k=20, T=0.1) top-1 on mnist5k test: pretrained" in first.stdout
  # A clean run prints sslx's lines only: no library notes (TensorFlow's oneDNN note,
  # absl's C++ log preamble, Orbax's, libtpu's), each line a log line of an sslx module.
  ours = {os.path.basename(f) for _, _, files in os.walk(os.path.join(REPO, "sslx"))
          for f in files if f.endswith(".py")} | {"main.py"}
  for line in first.stderr.splitlines():
    logged = re.match(r"[IWEF]\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\] ", line)
    assert logged and logged.group(1) in ours, line
  assert "linear probe top-1 on mnist5k test: pretrained" in first.stdout
  results = json.load(open(os.path.join(workdir, "pretrain_results.json")))
  assert results["step"] == 4
  assert set(results["eval"]) == {"pretrained", "random_init", "scratch"}
  for by_protocol in (results["eval"]["pretrained"], results["eval"]["random_init"]):
    for r in (by_protocol["knn"], by_protocol["linear"]):
      assert 0.0 <= r["top1"] <= 1.0 and r["top5"] >= r["top1"]
  # The few-label table: the probes of both encoders and the scratch baseline, per N.
  table = first.stdout.split("few labels, top-1 on mnist5k test")[1].splitlines()
  assert table[1].split() == ["labels", "per", "class", "1", "5", "10"]
  for line, title in zip(table[2:5], ("linear probe, pretrained", "linear probe, random_init",
                                      "from scratch (labels only)")):
    assert line.strip().startswith(title)
  for name in ("pretrained", "random_init"):
    few = results["eval"][name]["few_label_linear"]
    assert sorted(few) == ["1", "10", "5"] and all(r["draws"] == 2 for r in few.values())
    shown = [f"{few[n]['top1']:.1%}" for n in ("1", "5", "10")]
    assert next(line for line in table if f", {name}" in line).split()[-5:-2] == shown
  scratch = results["eval"]["scratch"]["few_label_scratch"]
  assert all(r["draws"] == 1 and 0.0 <= r["top1"] <= 1.0 for r in scratch.values())
  # Pictures, with the curves drawn from the values the run logged (TensorBoard too).
  assert set(results["plots"]) == {"curves", "embedding_map", "retrievals"}
  for path in results["plots"].values():
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in logged] == [2, 4]
  events = _tensorboard_scalars(workdir, "loss")
  assert events == pytest.approx({r["step"]: r["loss"] for r in logged}, rel=1e-6)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) == [2, 4]
  # The comparison job names the run by its config and shows its logged numbers.
  assert results["command"].startswith("python main.py --config=configs/byol.py ")
  assert 0 < results["wall_seconds"] < 3600
  compare_config = compare_config_lib.get_config()
  compare_config.runs = workdir
  table = compare_job.run(compare_config, str(tmp_path / "cmp"))["files"]["table"]
  pretrained = results["eval"]["pretrained"]
  assert (f"| `byol.py` | 4 | {results['wall_seconds']:.0f} s | {pretrained['knn']['top1']:.1%} | "
          f"{pretrained['linear']['top1']:.1%} |") in open(table).read()
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))

  # An evaluator can read only the encoder, and it is the one that was trained.
  encoder, config, step = checkpointing.load_encoder(workdir)
  assert step == 4 and config["model"]["name"] == "resnet10"
  assert "stem_conv" in encoder["params"]
  # main.py split the host into 2 CPU devices; a 1-device process still reads it.
  assert "2 devices (cpu)" in first.stderr
  reader = subprocess.run(
      [sys.executable, "-c", "from sslx.core import checkpointing; "
       f"print(checkpointing.load_encoder({workdir!r})[2]); "
       f"import sslx; sslx.load_encoder({workdir!r})"],
      cwd=REPO, env=dict(subprocess_env(), XLA_FLAGS=""),
      capture_output=True, text=True, timeout=300)
  assert reader.returncode == 0, reader.stderr[-2000:]
  assert reader.stdout.strip() == "4"
  assert not reader.stderr.strip(), reader.stderr  # no Orbax notes on reading read-only

  # Resumed in this process, on 1 device (main.py's default) where the first run had 2.
  caplog.set_level(logging.INFO)
  pretrain.run(main_config(tfds_dir, "--config.train_steps=6", "--config.eval.knn=False",
                           "--config.eval.linear=False", "--config.resume_changes=train_steps"),
               workdir)
  assert f"Resuming from {ckpt_dir}/4" in caplog.text
  assert "step 6/6" in caplog.text and "step 2/6" not in caplog.text
  assert json.load(open(os.path.join(workdir, "pretrain_results.json")))["step"] == 6
  # The metrics log continued the same run: steps 2..6, each once.
  logged = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["step"] for r in logged] == [2, 4, 6]
  resumed_encoder, _, step = checkpointing.load_encoder(workdir)
  assert step == 6
  assert not np.allclose(jax.tree.leaves(resumed_encoder["params"])[0],
                         jax.tree.leaves(encoder["params"])[0])


def _tensorboard_scalars(workdir, tag):
  """{step: value} of one scalar in the workdir's event files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  values = {}
  for name in sorted(os.listdir(workdir)):
    if name.startswith("events.out.tfevents"):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for value in event.summary.value:
          if value.tag == tag:
            values[event.step] = float(tf.make_ndarray(value.tensor))
  return values


@pytest.mark.slow
def test_periodic_evaluation_logs_the_encoder_of_that_step(tmp_path, tfds_dir):
  """eval.every_steps: the kNN of step 2's encoder, logged at step 2 (not the last step's or
  the initial one's), as an evaluation of checkpoint 2 computes it."""
  from sslx.core import checkpointing as ckpt_lib  # pylint: disable=g-import-not-at-top
  from sslx.core import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from sslx.data.info import Preprocessing  # pylint: disable=g-import-not-at-top
  from sslx.evaluation import frozen  # pylint: disable=g-import-not-at-top
  from sslx import models  # pylint: disable=g-import-not-at-top
  from sslx.jobs import pretrain  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  # (On a class-balanced sample of 500 train digits: eval.max_train_examples.)
  config = main_config(tfds_dir, "--config.train_steps=4", "--config.eval.every_steps=2",
                       "--config.eval.linear=False", "--config.eval.few_labels=()",
                       "--config.eval.compare_random_init=False", "--config.plots.enabled=False",
                       "--config.eval.max_train_examples=500", "--config.cpu_devices=1")
  pretrain.run(config, workdir)
  logged = _tensorboard_scalars(workdir, "eval/knn_pretrained_top1")
  assert set(logged) == {2, 4}  # the periodic one, then the final one
  saved = ckpt_lib.read_encoder(workdir, 2)
  evaluator = frozen.Evaluator(models.create_encoder(config.model),
                               Preprocessing.from_dict(saved.record["preprocessing"]),
                               config.data, mesh_lib.create_mesh(1), np.float32, config.eval, 10)
  at_2 = evaluator.evaluate({"step 2": saved.variables}, seed=config.seed)["step 2"]
  assert logged[2] == pytest.approx(at_2["knn"]["top1"], abs=1e-6)
  assert logged[2] != logged[4] or at_2 == evaluator.evaluate(
      {"step 4": ckpt_lib.read_encoder(workdir, 4).variables}, seed=config.seed)["step 4"]


METHOD_FLAGS = {
    "configs/simclr.py": ["--config.simclr.projector_hidden_dims=(32,)",
                          "--config.simclr.projector_dim=16"],
    "configs/moco.py": ["--config.moco.projector_hidden_dims=(32,)", "--config.moco.dim=16",
                        "--config.moco.queue_size=64", "--config.moco.bn_groups=4"],
    "configs/moco.py:v3": ["--config.moco.projector_hidden_dims=(32,)", "--config.moco.dim=16",
                           "--config.moco.predictor_hidden_dims=(32,)"],
    "configs/rotnet.py": [],
}


@pytest.mark.slow
@pytest.mark.parametrize("config_arg", sorted(METHOD_FLAGS))
def test_every_method_pretrains_checkpoints_and_evaluates(tmp_path, tfds_dir, config_arg, capsys):
  # In this process, on 2 of its 8 CPU devices: the config main.py would run with these
  # flags (main.py itself: test_main_trains_checkpoints_evaluates_and_resumes).
  config = main_config(
      tfds_dir, "--config.model.name=resnet10", "--config.model.width=0.125",
      "--config.batch_size=32", "--config.train_steps=2", "--config.optimizer.warmup_epochs=0",
      "--config.eval.batch_size=256", "--config.eval.linear=False",
      "--config.eval.max_train_examples=512",
      "--config.eval.compare_random_init=False",  # test_main_trains... covers the baseline
      "--config.eval.few_labels=()", "--config.plots.enabled=False",  # and these
      "--config.log_every_steps=1", "--config.cpu_devices=2", *METHOD_FLAGS[config_arg],
      config_file=config_arg, tiny=False)
  workdir = str(tmp_path / "run")
  run_results = pretrain.run(config, workdir)
  method = config_arg.split("/")[1].split(".")[0]
  assert run_results["method"] == method and run_results["dataset"] == "mnist5k"
  assert "kNN (k=20, T=0.1) top-1 on mnist5k test: pretrained" in capsys.readouterr().out
  results = json.load(open(os.path.join(workdir, "pretrain_results.json")))
  assert results["step"] == 2 and np.isfinite(results["final_metrics"]["loss"])
  assert results["eval"]["pretrained"]["knn"] == run_results["eval"]["pretrained"]["knn"]
  # The evaluators' view of the checkpoint: the encoder alone, whatever the method.
  encoder, saved_config, step = checkpointing.load_encoder(workdir)
  assert step == 2 and saved_config["method"] == method
  assert set(encoder) == {"params", "batch_stats"} and "stem_conv" in encoder["params"]
  # The transfer evaluator takes every method's checkpoint.
  eval_config = knn_eval_config.get_config()
  eval_config.update(dict(checkpoint=workdir, labels_per_class=20))
  eval_config.data.data_dir = tfds_dir
  results = knn_eval.run(eval_config, str(tmp_path / "knn"))
  assert results["method"] == method and results["step"] == 2 and results["num_labelled"] == 200


def test_log_filter_drops_only_orbax_and_tfds_info_and_unretrieved_asyncio_failures():
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from sslx.core import quiet_noise  # pylint: disable=g-import-not-at-top

  def record(name, level, msg, path="/x.py"):
    return std_logging.LogRecord(name, level, path, 1, msg, None, None)

  keep = quiet_noise.QuietLibraries().filter
  # After a failed restore, sibling reads' failures are never retrieved: noise.
  assert not keep(record("asyncio", std_logging.ERROR, "Task exception was never retrieved"))
  assert not keep(record("orbax", std_logging.INFO, "saved", "/site-packages/orbax/x.py"))
  # Everything else is kept: other asyncio errors, library warnings, sslx's own logs.
  assert keep(record("asyncio", std_logging.ERROR, "Exception in callback"))
  assert keep(record("orbax", std_logging.WARNING, "slow", "/site-packages/orbax/x.py"))
  assert keep(record("absl", std_logging.INFO, "step 1/2", "/work/sslx/core/progress.py"))


_ABANDONED_READ = """
import asyncio

async def _read_array_index_and_device_put():
  try:
    await asyncio.sleep(0)
  except GeneratorExit as e:  # as Orbax's read does when its restore is abandoned
    raise Exception("Encountered error while reading array index") from e


class Loop:
  def __init__(self, message):
    self.message = message

  def __del__(self):
    raise RuntimeError(self.message)
"""


@pytest.mark.parametrize("source, make, printed", [
    ("/site-packages/orbax/checkpoint/serialization.py", "read", False),
    ("/site-packages/orbax/checkpoint/serialization.py", "Event loop is closed", False),
    # Not Orbax's, or another exception: printed as Python prints it.
    ("/work/sslx/core/checkpointing.py", "read", True),
    ("/site-packages/orbax/checkpoint/serialization.py", "Event loop is running", True),
])
def test_unraisable_hook_drops_only_orbaxs_abandoned_reads_and_closed_loops(
    source, make, printed, capsys, monkeypatch):
  import gc  # pylint: disable=g-import-not-at-top
  from sslx.core import quiet_noise  # pylint: disable=g-import-not-at-top
  namespace = {}
  exec(compile(_ABANDONED_READ, source.replace("/", os.sep), "exec"), namespace)  # pylint: disable=exec-used
  monkeypatch.setattr(sys, "unraisablehook", quiet_noise.ignore_known_noise)
  if make == "read":
    read = namespace["_read_array_index_and_device_put"]()
    read.send(None)  # suspended mid-read, then abandoned: closing it raises
    del read
  else:
    namespace["Loop"](make)  # raises in __del__
  gc.collect()
  err = capsys.readouterr().err
  assert ("Exception ignored" in err) == printed, err


def test_main_reports_bad_input_without_a_stack_trace(tmp_path, tfds_dir):
  workdir = tmp_path / "bad"
  result = _main(str(workdir), tfds_dir, "--config.method=byool")
  assert result.returncode == 2
  assert "Unknown method 'byool'" in result.stderr and "byol" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (workdir / "checkpoints").exists()


@pytest.mark.parametrize("overrides, expected", [
    (dict(method="simclrr"), ["Unknown method 'simclrr'",
                              "did you mean 'simclr'? Valid: byol, colorization, context_encoder, "
                              "cpc, exemplar, instance_discrimination, jigsaw, moco, "
                              "relative_patch, rotnet, simclr, supervised."]),
    (dict(method="simclr"), ["config.simclr", "configs/simclr.py"]),
    (dict(model=dict(name="resnet19")), ["resnet19", "resnet18", "resnet50"]),
    (dict(data=dict(dataset="cifar11")), ["cifar11", "cifar10", "mnist5k", "npz:", "folder:"]),
    (dict(batch_size=12, num_devices=8), ["batch_size=12", "8"]),
])
def test_bad_config_errors_list_valid_values_and_write_nothing(tmp_path, overrides, expected):
  config = tiny_config()
  data_overrides = overrides.pop("data", {})
  model_overrides = overrides.pop("model", {})
  config.update(overrides)
  config.data.update(data_overrides)
  config.model.update(model_overrides)
  with pytest.raises(errors.ConfigError) as info:
    pretrain.run(config, str(tmp_path))
  for text in expected:
    assert text in str(info.value)
  assert not (tmp_path / "checkpoints").exists()


def test_all_problems_are_reported_at_once(tmp_path):
  config = tiny_config(method="nope", batch_size=12, num_devices=8)
  config.model.name = "resnet0"
  with pytest.raises(errors.ConfigError) as info:
    pretrain.run(config, str(tmp_path))
  message = str(info.value)
  assert "nope" in message and "resnet0" in message and "batch_size=12" in message


def test_unprepared_tfds_dataset_names_dataset_and_data_dir(tmp_path):
  config = tiny_config()
  config.data.update(dataset="cifar10", data_dir=str(tmp_path / "empty_tfds"), download=False)
  with pytest.raises(errors.DatasetNotAvailableError) as info:
    pretrain.run(config, str(tmp_path / "run"))
  assert "cifar10" in str(info.value) and str(tmp_path / "empty_tfds") in str(info.value)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_workdir_fails_before_training(tmp_path, tfds_dir):
  if os.geteuid() == 0:
    # root ignores directory permissions; a path under a regular file cannot be created by anyone.
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    workdir = blocker / "run"
  else:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    workdir = locked / "run"
  result = _main(str(workdir), tfds_dir, "--config.train_steps=2")
  assert result.returncode == 2
  assert "Cannot write to the workdir" in result.stderr and "Traceback" not in result.stderr
  assert "compiled and ran the first step" not in result.stderr
