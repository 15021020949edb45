"""notebooks/sslx_colab.ipynb runs end to end on CPU, so a change that breaks it fails here.

The notebook reads its parameters from SSLX_NB_* environment variables, which
the kernel inherits: a tiny BYOL on the embedded digits, as TINY_FLAGS shrink
the quick start.
"""

import base64
import json
import os

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = os.path.join(REPO, "notebooks", "sslx_colab.ipynb")

TINY = {"model.width": 0.125, "data.image_size": 16, "batch_size": 16, "train_steps": 4,
        "optimizer.warmup_epochs": 0.0, "byol.projector_hidden_dim": 32,
        "byol.projector_dim": 16, "byol.predictor_hidden_dim": 32, "eval.batch_size": 256,
        "eval.max_train_examples": 512, "eval.few_label_draws": 2, "eval.scratch.steps": 3,
        "eval.scale_with_run": False,
        "plots.tsne_max_points": 200, "log_every_steps": 2, "checkpoint_every_steps": 2,
        "cpu_devices": 2,
        # The random-init rows: test_main's end-to-end case checks them through main.py.
        "eval.compare_random_init": False}


def _outputs(cell) -> str:
  return "".join(o.get("text", "") for o in cell.get("outputs", []) if o["output_type"] == "stream")


@pytest.mark.slow
def test_colab_notebook_runs_on_cpu_and_reports_the_runs_own_numbers(tmp_path, tfds_dir,
                                                                     monkeypatch):
  workdir = str(tmp_path / "run")
  overrides = dict(TINY, **{"data.data_dir": tfds_dir})
  monkeypatch.setenv("SSLX_NB_WORKDIR", workdir)
  monkeypatch.setenv("SSLX_NB_OVERRIDES", json.dumps(overrides))
  # The own-images cell, on a small folder of photographs in two classes (no test split).
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from skimage import data as skimage_data  # pylint: disable=import-outside-toplevel
  own = tmp_path / "own"
  for name, photo in (("astronaut", skimage_data.astronaut()), ("coffee", skimage_data.coffee())):
    (own / name).mkdir(parents=True)
    for i in range(10):
      Image.fromarray(photo[i * 10:i * 10 + 200, i * 12:i * 12 + 260]).save(own / name / f"{i}.jpg")
  monkeypatch.setenv("SSLX_NB_OWN_IMAGES", str(own))
  monkeypatch.setenv("SSLX_NB_OWN_OVERRIDES", json.dumps({
      "model.width": 0.125, "batch_size": 16, "train_epochs": 0, "train_steps": 2,
      "simclr.projector_hidden_dims": [32], "simclr.projector_dim": 16,
      "eval.few_labels": [], "eval.compare_random_init": False, "plots.enabled": False}))
  # Let the notebook split the host into devices itself, as on a fresh runtime.
  monkeypatch.delenv("JAX_NUM_CPU_DEVICES", raising=False)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}}).execute()

  code = [c for c in nb.cells if c.cell_type == "code"]
  text = "\n".join(_outputs(c) for c in code)
  assert "platform cpu: 2 devices on 1 process(es)" in text
  assert "mesh {'data': 2}" in text
  assert "config: byol on mnist5k, resnet10 (width 0.125), batch 16 (8 per device), 4 steps" in text

  results = json.load(open(os.path.join(workdir, "pretrain_results.json")))
  assert results["step"] == 4
  # The evaluation cell prints the run's own results, not other numbers.
  for protocol in ("knn", "linear"):
    shown = {name: f"{r[protocol]['top1']:.1%}" for name, r in results["eval"].items()
             if protocol in r}
    assert f"{protocol:>7}: {shown}" in text
  assert "few_label_scratch [scratch]" in text
  # The three pictures are displayed as PNGs.
  images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) == 3
  for o in images:
    assert base64.b64decode(o["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
  # The encoder, loaded back, feeds scikit-learn and exports.
  assert "features (1000, " in text
  assert "'stage4': (4, " in text
  assert "logistic regression on 1,000 labelled digits" in text
  description = json.load(open(os.path.join(workdir, "export", "encoder.json")))
  assert description["model"]["width"] == 0.125
  # It installed nothing here (every requirement present) and trained on the photographs.
  assert "missing requirements: none" in text
  own_results = json.load(open(workdir + "_own/pretrain_results.json"))
  assert own_results["dataset"] == f"folder:{own}" and own_results["step"] == 2
  assert f"your images, knn: {{'pretrained': '{own_results['eval']['pretrained']['knn']['top1']:.1%}'}}" in text
