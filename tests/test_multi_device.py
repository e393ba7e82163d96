"""MirroredStrategy over two logical CPU devices gives what one device gives on the same global batch.

TensorFlow fixes its logical devices at start-up, so the comparison runs in a fresh subprocess. The fit
(tests/distribution_case.py) has no BatchNormalization and no mixup draws, so the two runs must agree to
float32 rounding: the loss is divided by the replica count and the loss parts are Keras metrics.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

TESTS = str(Path(__file__).resolve().parent)
SCRIPT = textwrap.dedent(
    f"""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    sys.path.insert(0, {TESTS!r})
    import distribution_case

    results = {{
        label: distribution_case.fit(strategy)
        for label, strategy in (
            ("one", tf.distribute.OneDeviceStrategy("/cpu:0")),
            ("mirrored", tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])),
        )
    }}
    print("RESULT" + json.dumps(results))
    """
)


def test_mirrored_strategy_matches_one_device():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.split("RESULT", 1)[1])
    one, mirrored = runs["one"], runs["mirrored"]
    assert (one["replicas"], mirrored["replicas"]) == (1, 2)
    for key in ("loss", "ce_loss", "kd_loss", "accuracy"):
        np.testing.assert_allclose(mirrored[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert one["loss"][0] > 0  # a step that reported zero loss would match trivially
    for a, b in zip(one["weights"], mirrored["weights"]):
        np.testing.assert_allclose(np.array(b), np.array(a), atol=1e-6)


def test_cli_strategy_option_runs_mirrored(tmp_path):
    from click.testing import CliRunner

    from stkd_keras.cli.main import cli

    result = CliRunner().invoke(
        cli,
        [
            "train-teacher",
            "--model",
            "cnn8",
            "--epochs",
            "1",
            "--train-subset",
            "128",
            "--val-subset",
            "64",
            "--strategy",
            "mirrored",
            "--quiet",
            "--output",
            str(tmp_path / "run"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "MirroredStrategy over 1 device(s)" in result.output  # this machine has one CPU device in-process
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["strategy"] == "mirrored"
