"""The wheel installs export/ and cli/ inside the library, never as top-level modules."""

import shutil
import subprocess
import sys
import re
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_layout(tmp_path):
    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("stkd_keras", "export", "cli"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("stkd_keras-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"stkd_keras", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert "stkd_keras/cli/main.py" in names and "stkd_keras/export/__init__.py" in names
    assert {"stkd_keras/methods/__init__.py", "stkd_keras/methods/stkd.py", "stkd_keras/backend.py"} <= set(names)
    # The core installs without TensorFlow: backends, data pipelines and export are extras.
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = {re.split(r"[<>=!~; \[]", r)[0].lower() for r in requires if "extra ==" not in r}
    assert core == {"keras", "numpy", "click", "pyyaml", "matplotlib"}
    extras = {r.split("extra ==")[1].strip().strip("'\"") for r in requires if "extra ==" in r}
    assert {"tensorflow", "jax", "torch", "export"} <= extras
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "stkd-keras = stkd_keras.cli.main:cli" in entry_points
