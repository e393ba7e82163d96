"""`--strategy data_parallel` through the command line: keras.distribution on JAX gives what one device gives.

Runs the real `stkd-keras train-teacher` on the JAX backend, in subprocesses (JAX fixes its devices at start-up):
- one device (the reference);
- two virtual CPU devices in one process (`XLA_FLAGS=--xla_force_host_platform_device_count=2`);
- two processes on localhost, one device each, joined by `keras.distribution.initialize` (JAX's CPU collectives);
each on the same global batch of the same stream, with `--deterministic`. The per-epoch figures (history.csv) and
the saved weights must agree to float32 rounding of the cross-device reductions; only process 0 writes the run.
"""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = [
    "train-teacher",
    "--backend",
    "jax",
    "--model",
    "cnn8",
    "--epochs",
    "2",
    "--train-subset",
    "256",
    "--val-subset",
    "128",
    "--batch-size",
    "64",
    "--seed",
    "5",
    "--deterministic",
    "--quiet",
]


def _environment(devices: int | None = None) -> dict:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("KERAS_DISTRIBUTION_")}
    environment.pop("XLA_FLAGS", None)
    if devices:
        environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return environment


def _command(*args):
    return [sys.executable, "-m", "stkd_keras.cli.main", *RUN, *map(str, args)]


def _history(folder: Path) -> dict:
    with open(folder / "history.csv") as f:
        rows = list(csv.DictReader(f))
    return {key: [float(row[key]) for row in rows] for key in ("loss", "accuracy", "val_loss", "val_accuracy")}


def _assert_same_run(run: Path, reference: Path):
    history, expected = _history(run), _history(reference)
    assert expected["loss"][0] > 0
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], rtol=1e-5, err_msg=key)
    for a, b in zip(
        keras.saving.load_model(run / "teacher.keras").get_weights(),
        keras.saving.load_model(reference / "teacher.keras").get_weights(),
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    output = tmp_path_factory.mktemp("one") / "run"
    result = subprocess.run(
        _command("--output", output), cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output


# tests/test_jax_data_parallel.py checks two devices in one process through the Python API in the default run.
@pytest.mark.slow
def test_two_devices_in_one_process_match_one_device(tmp_path, one_device):
    output = tmp_path / "run"
    result = subprocess.run(
        _command("--strategy", "data_parallel", "--output", output),
        cwd=ROOT,
        env=_environment(2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "keras.distribution.DataParallel over 2 device(s)." in result.stdout
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["backend"], metrics["replicas"], metrics["config"]["strategy"]) == ("jax", 2, "data_parallel")
    _assert_same_run(output, one_device)


# About 70 s: `pytest -m slow`, which .ci/run also runs. By default tests/test_jax_data_parallel.py joins two
# processes on localhost through the same keras.distribution calls, and two devices in one process.
@pytest.mark.slow
def test_two_processes_on_localhost_match_one_device(tmp_path, one_device):
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        port = probe.getsockname()[1]
    output = tmp_path / "run"
    processes = [
        subprocess.Popen(
            _command(
                "--strategy",
                "data_parallel",
                "--coordinator-address",
                f"localhost:{port}",
                "--num-processes",
                2,
                "--process-id",
                index,
                "--output",
                output,
            ),
            cwd=ROOT,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in (0, 1)
    ]
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert "keras.distribution.DataParallel over 2 device(s) in 2 processes; this is process 0." in outputs[0]
    assert "Worker finished; the chief saved the teacher." in outputs[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the chief alone wrote a run folder
    assert json.loads((output / "metrics.json").read_text())["replicas"] == 2
    _assert_same_run(output, one_device)
