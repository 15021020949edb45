"""main.py explains itself: --help, a bare call, and one line for every typo (exit code 2)."""

import subprocess
import sys

import pytest

from sslx.config import catalog
from sslx.config import overrides
from sslx.jobs import usage
from conftest import REPO, subprocess_env


def _run(*args, timeout=120):
  return subprocess.run([sys.executable, "main.py", *args], cwd=REPO, env=subprocess_env(),
                        capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_config_with_its_presets_and_every_job():
  result = _run("--help")
  assert result.returncode == 0, result.stderr[-2000:]
  out = result.stdout
  for entry in catalog.entries(f"{REPO}/configs"):
    name = entry.path.rsplit("/", 1)[-1]
    assert f"  {name}" in out
  assert "presets: mnist5k (default), mnistm5k, cifar10, cifar100, imagenet, folder" in out
  assert "versions v2 (default), v3" in out  # MoCo
  assert "presets: none (the checkpoint's dataset, the default)" in out  # the evaluators
  for job in ("pretrain", "knn_eval", "linear_eval", "finetune", "export", "compare"):
    assert f"\n  {job} " in out
  assert "Traceback" not in result.stderr


def test_a_bare_call_says_what_to_run_and_exits_2():
  result = _run()
  assert result.returncode == 2
  assert result.stderr.startswith("usage: python main.py --config=configs/NAME.py[:PRESET]")
  assert "byol.py" in result.stderr and "--help" in result.stderr
  assert len(result.stderr.splitlines()) <= 5


@pytest.mark.parametrize("args, line", [
    (["--config=configs/byoll.py", "--workdir=/tmp/x"],
     "error: --config=configs/byoll.py: there is no config file 'configs/byoll.py'; did you mean "
     "'configs/byol.py'"),
    (["--config=configs/byol.py:cifar1O", "--workdir=/tmp/x"],
     "error: --config=configs/byol.py:cifar1O: configs/byol.py has no preset 'cifar1O'; did you "
     "mean 'cifar10' or 'cifar100'? Valid: mnist5k, mnistm5k, cifar10, cifar100, imagenet, "
     "folder."),
    (["--config=configs/moco.py:cifar10,v4", "--workdir=/tmp/x"],
     "has no preset 'v4'; did you mean 'v3' or 'v2'?"),
    (["--config=configs/byol.py:cifar1O", "--workdir=/tmp/x", "--config.seed=1"],
     "has no preset 'cifar1O'"),
    (["--config=configs/byol.py"], "error: --workdir is required"),
    (["--workdir=/tmp/x"], "error: --config is required"),
    (["--config=configs/byol.py", "--workdir=/tmp/x", "--config.learning_rate=0.1"],
     "error: --config.learning_rate: config has no field 'learning_rate'; did you mean "
     "config.optimizer.base_learning_rate or config.probe.learning_rate?"),
])
def test_typos_are_one_line_with_a_did_you_mean_and_exit_2(args, line):
  result = _run(*args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert line in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_dataset_path_without_its_kind_suggests_it(tmp_path):
  result = _run("--config=configs/byol.py", f"--workdir={tmp_path / 'w'}",
                f"--config.data.dataset={tmp_path}")
  assert result.returncode == 2
  assert f"did you mean --config.data.dataset=folder:{tmp_path}?" in result.stderr
  assert "Traceback" not in result.stderr


def test_suggestions_rank_the_main_sections_first():
  config = overrides.load_config(f"{REPO}/configs/byol.py")
  (problem,) = overrides.problems(config, [("weight_decay", "0.1")])
  assert "did you mean config.optimizer.weight_decay" in problem
  (problem,) = overrides.problems(config, [("dataset", "cifar10")])
  assert "did you mean config.data.dataset?" in problem


def test_the_brief_help_names_every_config():
  text = usage.help_text(f"{REPO}/configs", brief=True)
  assert all(name in text for name in ("byol.py", "moco.py", "knn_eval.py", "finetune.py"))
