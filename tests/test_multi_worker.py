"""MultiWorkerMirroredStrategy with two worker processes on localhost (keras-team/keras#20585 mended).

Each worker is a subprocess with its own TF_CONFIG and runs the fit of tests/distribution_case.py, as
test_multi_device does: no BatchNormalization and no per-replica mixup draws, so the two workers must
report what one device reports on the same global batch, to float32 rounding.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stkd_keras import tf_strategies
from stkd_keras.cli.main import cli

TESTS = str(Path(__file__).resolve().parent)
SCRIPT = textwrap.dedent(
    f"""
    import json, sys
    from stkd_keras import tf_strategies
    strategy = tf_strategies.get_strategy(sys.argv[1])  # before any TensorFlow op
    sys.path.insert(0, {TESTS!r})
    import distribution_case

    print("RESULT" + json.dumps(distribution_case.fit(strategy)))
    """
)


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cluster_env(ports, index):
    config = {
        "cluster": {"worker": [f"localhost:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    }
    return {**os.environ, "TF_CONFIG": json.dumps(config)}


def run_workers(command, count=2, timeout=400):
    """Runs `command` once per worker of a localhost cluster; returns the completed processes, chief first."""
    ports = free_ports(count)
    processes = [
        subprocess.Popen(
            command, env=cluster_env(ports, index), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for index in range(count)
    ]
    outputs = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=timeout)
        outputs.append((process.returncode, stdout, stderr))
    return outputs


# Slow (30 s): the default run starts two workers through the command line (the chief writes, the other not).
@pytest.mark.slow
def test_two_workers_match_one_device():
    single = subprocess.run([sys.executable, "-c", SCRIPT, "default"], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    one = json.loads(single.stdout.split("RESULT", 1)[1])
    workers = run_workers([sys.executable, "-c", SCRIPT, "multi_worker"])
    results = []
    for returncode, stdout, stderr in workers:
        assert returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.split("RESULT", 1)[1]))
    assert one["replicas"] == 1 and [r["replicas"] for r in results] == [2, 2]
    assert one["loss"][0] > 0  # a step that reported zero loss would match trivially
    for result in results:
        for key in ("loss", "ce_loss", "kd_loss", "accuracy"):
            np.testing.assert_allclose(result[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
        for a, b in zip(one["weights"], result["weights"]):
            np.testing.assert_allclose(np.array(b), np.array(a), atol=1e-6)


def test_cli_multi_worker_run_is_written_by_the_chief_only(tmp_path):
    output = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "stkd_keras.cli.main",
        "train-teacher",
        "--strategy",
        "multi_worker",
        "--model",
        "cnn8",
        "--epochs",
        "1",
        "--train-subset",
        "128",
        "--val-subset",
        "64",
        "--quiet",
        "--output",
        str(output),
    ]
    (chief, worker) = run_workers(command)
    assert chief[0] == 0, chief[2][-3000:]
    assert worker[0] == 0, worker[2][-3000:]
    assert "this is worker 0" in chief[1] and "Saved" in chief[1]
    assert "this is worker 1" in worker[1] and "the chief saved the teacher" in worker[1]
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["strategy"] == "multi_worker" and (output / "teacher.keras").is_file()
    # The chief measures the final model's calibration on its own 64 validation images, not on both workers' copies.
    assert sum(row["count"] for row in metrics["final_val_calibration"]["bins"]) == 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no worker folder, no staging left


def test_chief_is_worker_zero_unless_a_chief_task_exists(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tf_strategies.is_chief() and tf_strategies.cluster_task() is None
    workers = {"worker": ["a:1", "b:2"]}
    for cluster, task, chief in (
        (workers, {"type": "worker", "index": 0}, True),
        (workers, {"type": "worker", "index": 1}, False),
        ({**workers, "chief": ["c:3"]}, {"type": "worker", "index": 0}, False),
        ({**workers, "chief": ["c:3"]}, {"type": "chief", "index": 0}, True),
    ):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))
        assert tf_strategies.is_chief() is chief, (cluster, task)


def test_bad_or_missing_tf_config_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not a cluster description"):
        tf_strategies.is_chief()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {}, "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="names no `worker` or `chief` hosts"):
        tf_strategies.cluster_task()
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        tf_strategies.get_strategy("multi_worker")
    result = CliRunner().invoke(
        cli,
        [
            "train-teacher",
            "--strategy",
            "multi_worker",
            "--model",
            "cnn8",
            "--epochs",
            "1",
            "--train-subset",
            "64",
            "--output",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 1 and "needs TF_CONFIG" in result.output
    assert not any(tmp_path.iterdir())
