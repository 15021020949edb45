"""The README is a front page and docs/ builds as a site with every link resolving."""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def test_the_readme_is_a_front_page():
  lines = open(os.path.join(REPO, "README.md")).read().splitlines()
  assert len(lines) <= 300, len(lines)
  assert "python main.py --config=configs/byol.py --workdir=/tmp/sslx_byol" in lines
  assert "python -m pytest -n 2 tests" in lines


@pytest.mark.parametrize("path", [os.path.join(REPO, "README.md"), *DOCS],
                         ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_resolves_and_nothing_is_left_to_fill(path):
  text = open(path).read()
  assert "{{" not in text and "}}" not in text, "an unfilled placeholder"
  for target in re.findall(r"\]\(([^)\s]+)\)", text):
    if re.match(r"[a-z]+://", target) or target.startswith("#"):
      continue
    file_part = target.split("#")[0]
    assert os.path.exists(os.path.join(os.path.dirname(path), file_part)), target


def test_the_site_builds_in_strict_mode(tmp_path):
  mkdocs = shutil.which("mkdocs") or os.path.join(os.path.dirname(sys.executable), "mkdocs")
  result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "site" / "index.html").exists()
  assert (tmp_path / "site" / "reliability" / "index.html").exists()
