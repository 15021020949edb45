"""End to end: a tiny pretraining, then every evaluator as main.py runs it; bad input fails cleanly."""

import hashlib
import json
import os

import orbax.checkpoint as ocp
import pytest

from sslx.core import checkpointing
from sslx import errors
from sslx.jobs import knn_eval
from sslx.jobs import linear_eval
from sslx.jobs import JOBS
from conftest import TINY_EVAL, main_config, run_main
from configs import knn_eval as knn_eval_config



def _tree_digest(directory):
  digest = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(directory)):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      digest.update(path.encode())
      digest.update(open(path, "rb").read())
  return digest.hexdigest()


def _evaluate(capsys, config_file, workdir, tfds_dir, *flags) -> str:
  """The job main.py would run with these flags, in this process on 2 of its 8 devices
  (main.py starts evaluators in test_crash_safety and test_multihost_jobs); its stdout."""
  config = main_config(tfds_dir, *TINY_EVAL, *flags, config_file=config_file, tiny=False)
  capsys.readouterr()
  JOBS.get(config.job)(config, workdir)
  return capsys.readouterr().out


RUNS = {
    "knn": ("configs/knn_eval.py", []),
    "linear": ("configs/linear_eval.py", ["--config.linear.l2_grid=(0.0001,0.01)"]),
    "linear_augmented": ("configs/linear_eval.py", [
        "--config.linear.augment=True", "--config.linear.epochs=0.2",
        "--config.linear.learning_rates=(0.1,1.0)", "--config.linear.weight_decays=(0.0,)"]),
    "finetune": ("configs/finetune.py", [
        "--config.label_fraction=0.1", "--config.finetune.epochs=0.5",
        "--config.finetune.train_from=stage2"]),
    # Probes of an earlier layer (sslx/evaluation/features.py), on both linear paths.
    "knn_stage3": ("configs/knn_eval.py", [
        "--config.eval.feature_layer=stage3", "--config.eval.feature_grid=2"]),
    "linear_augmented_stage2": ("configs/linear_eval.py", [
        "--config.linear.augment=True", "--config.linear.epochs=0.2",
        "--config.linear.learning_rates=(0.1,)", "--config.linear.weight_decays=(0.0,)",
        "--config.eval.feature_layer=stage2", "--config.eval.feature_grid=3"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RUNS))
def test_evaluator_reads_the_checkpoint_and_writes_results(tmp_path, tfds_dir, pretrained, name,
                                                           capsys):
  config_file, flags = RUNS[name]
  before = _tree_digest(os.path.join(pretrained, "checkpoints"))
  workdir = str(tmp_path / name)
  stdout = _evaluate(capsys, config_file, workdir, tfds_dir, f"--config.checkpoint={pretrained}",
                     *flags)
  results = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert results["checkpoint"] == os.path.join(pretrained, "checkpoints", "2")
  assert results["step"] == 2 and results["method"] == "byol"
  assert results["dataset"] == "mnist5k" and results["split"] == "test"
  assert results["seed"] == 0 and results["model"]["name"] == "resnet10"
  # mnist5k has 10 classes, so top-5 is reported; 10% of 4,000 is 400 images.
  assert 0.0 <= results["top1"] <= results["top5"] <= 1.0
  expected_labelled = 400 if name == "finetune" else 4000
  assert results["num_labelled"] == expected_labelled
  if name == "linear_augmented":
    assert len(results["sweep"]) == 2 and results["num_holdout"] == 400
    assert results["holdout_top1"] == max(r["holdout_top1"] for r in results["sweep"])
  layer, grid = {"knn_stage3": ("stage3", 2), "linear_augmented_stage2": ("stage2", 3)}.get(
      name, (None, 1))
  assert (results["feature_layer"], results["feature_grid"]) == (layer, grid)
  assert (f"on {layer} ({grid}x{grid} grid)" in stdout) == (layer is not None)
  assert f"top-1 {results['top1']:.1%}" in stdout
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(workdir))
  # The evaluator only read the pretraining checkpoint.
  assert _tree_digest(os.path.join(pretrained, "checkpoints")) == before


@pytest.mark.slow
def test_random_and_scratch_baselines(tmp_path, tfds_dir, capsys):
  knn_dir, ft_dir = str(tmp_path / "knn_random"), str(tmp_path / "ft_scratch")
  knn = _evaluate(capsys, "configs/knn_eval.py", knn_dir, tfds_dir, "--config.checkpoint=random",
                  "--config.model.width=0.125", "--config.labels_per_class=5")
  results = json.load(open(os.path.join(knn_dir, "eval_results.json")))
  assert results["checkpoint"] == "random" and results["step"] is None
  assert results["num_labelled"] == 50 and results["model"]["width"] == 0.125
  assert "random init" in knn
  scratch = _evaluate(capsys, "configs/finetune.py", ft_dir, tfds_dir, "--config.checkpoint=scratch",
                      "--config.model.width=0.125", "--config.labels_per_class=5",
                      "--config.finetune.epochs=2")
  results = json.load(open(os.path.join(ft_dir, "eval_results.json")))
  assert results["backbone_lr_ratio"] == 1.0 and results["train_from"] == "stem"
  assert "supervised from scratch" in scratch


def _config(checkpoint, tfds_dir, **overrides):
  c = knn_eval_config.get_config()
  c.checkpoint = checkpoint
  c.data.data_dir = tfds_dir
  c.update(overrides)
  return c


@pytest.mark.slow
def test_bad_checkpoints_give_clear_errors(tmp_path, tfds_dir, pretrained):
  with pytest.raises(errors.CheckpointError, match="No checkpoints under"):
    knn_eval.run(_config(str(tmp_path / "nothing"), tfds_dir), str(tmp_path / "e1"))
  with pytest.raises(errors.CheckpointError, match=r"available steps: \[2\]"):
    knn_eval.run(_config(pretrained, tfds_dir, checkpoint_step=7), str(tmp_path / "e2"))
  c = _config(pretrained, tfds_dir)
  c.model.name = "resnet50"
  with pytest.raises(errors.CheckpointError, match="name='resnet10'.*model.name='resnet50'"):
    knn_eval.run(c, str(tmp_path / "e3"))
  with pytest.raises(errors.ConfigError, match="--workdir is the workdir of the run it evaluates"):
    knn_eval.run(_config(pretrained, tfds_dir), pretrained)
  with pytest.raises(errors.ConfigError, match="checkpoint=scratch trains an encoder"):
    linear_eval.run(_config("scratch", tfds_dir), str(tmp_path / "e4"))


def test_main_reports_a_missing_checkpoint_without_a_stack_trace(tmp_path, tfds_dir):
  result = run_main(str(tmp_path / "e"), tfds_dir, *TINY_EVAL,
                    f"--config.checkpoint={tmp_path / 'missing'}",
                    config_file="configs/linear_eval.py", tiny=False)
  assert result.returncode == 2
  assert "No checkpoints under" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("race", [
    # the stat of a listed step that is gone (seen in CI)
    FileNotFoundError(2, "No such file or directory"),
    # Orbax's metadata path check: exists(), then not is_dir() (seen on 2026-12-07)
    NotADirectoryError("Path is not a directory"),
])
def test_a_step_deleted_while_orbax_lists_the_steps_is_not_an_error(pretrained, monkeypatch,
                                                                     race):
  # Orbax lists the step directories, then stats each; a live writer's keep-N
  # deletion in between raises one of these. The reader must list again, not
  # fail. Here every other listing hits that race.
  listings = {"calls": 0}
  load_infos = ocp.CheckpointManager._load_checkpoint_infos

  def racy_load_infos(self, *args, **kwargs):
    listings["calls"] += 1
    if listings["calls"] % 2 == 1:
      raise race
    return load_infos(self, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "_load_checkpoint_infos", racy_load_infos)
  encoder, config, step = checkpointing.load_encoder(pretrained)
  assert step == 2 and config["method"] == "byol" and "params" in encoder
  assert listings["calls"] >= 4  # the opening and the reload each failed once, then listed again


def test_an_evaluator_without_a_dataset_reads_the_checkpoints_own(tmp_path, pretrained, caplog):
  import logging  # pylint: disable=import-outside-toplevel
  config = knn_eval_config.get_config()
  assert config.data.dataset is None and config.data.data_dir is None
  config.update(checkpoint=pretrained, num_devices=1)
  config.knn.k = 5
  with caplog.at_level(logging.INFO):
    results = knn_eval.run(config, str(tmp_path / "knn"))
  assert "evaluating on mnist5k, the dataset the encoder was trained on" in caplog.text
  saved = json.load(open(tmp_path / "knn" / "eval_results.json"))
  assert saved["dataset"] == results["dataset"] == "mnist5k"
