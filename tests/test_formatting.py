"""The tree as ruff formats it (pyproject.toml's [tool.ruff]): one layout, lines of at most 120 columns."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*arguments):
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed; `pip install -r requirements.txt` installs it.")
    return subprocess.run(
        [sys.executable, "-m", "ruff", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_every_file_is_formatted():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_line_over_120_columns_and_no_unused_or_undefined_name():
    """E501 (comments and strings, which the formatter leaves) and pyflakes' F rules, over the whole tree."""
    result = _ruff("check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr
