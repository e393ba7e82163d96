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
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("stkd_keras-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"stkd_keras", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    assert "stkd_keras/cli/main.py" in names and "stkd_keras/export/__init__.py" in names
    assert {"stkd_keras/methods/__init__.py", "stkd_keras/methods/stkd.py", "stkd_keras/backend_ops.py"} <= set(names)
    # The core installs without TensorFlow: backends, data pipelines and export are extras.
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = {re.split(r"[<>=!~; \[]", r)[0].lower() for r in requires if "extra ==" not in r}
    assert core == {"keras", "numpy", "click", "pyyaml", "matplotlib", "pillow"}
    extras = {r.split("extra ==")[1].strip().strip("'\"") for r in requires if "extra ==" in r}
    assert {"tensorflow", "jax", "torch", "export"} <= extras
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "stkd-keras = stkd_keras.cli.main:cli" in entry_points


def test_the_readme_first_screen_says_what_it_is_and_how_to_install_one_backend():
    """The README once opened with set-up commands before saying what the tool is, never mentioned a virtual
    environment, and put the multi-GB CUDA torch warning 150 lines below the install line."""
    import tomllib

    lines = (ROOT / "README.md").read_text().splitlines()
    first_screen = "\n".join(lines[:45])
    prose = next(line for line in lines[1:] if line.strip())
    assert prose.startswith("**stkd-keras distils") and "Keras" in prose  # what it does, before any command
    # The two commands, word for word (CI runs the second through .ci/run).
    setup = "apt-get update && apt-get install -y dataset-fashion-mnist && pip install -r requirements.txt -e . && "
    assert (
        setup + "stkd-keras distill --dataset fashion_mnist" in first_screen
        and setup + "pytest\n" in first_screen + "\n"
    )
    assert (
        "python3 -m venv .venv" in first_screen
        and "download.pytorch.org/whl/cpu" in first_screen
        and "CUDA build" in first_screen
    )
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    named = {
        name for group in re.findall(r"pip install -e '\.\[([a-z,]+)\]'", first_screen) for name in group.split(",")
    }
    assert named == {"tensorflow", "export", "jax", "torch"} and named <= extras
    # What the first command gives, and where the reference starts.
    assert "What command 1 gives" in first_screen and first_screen.index("What command 1 gives") < first_screen.index(
        "## STKD in five lines"
    )
