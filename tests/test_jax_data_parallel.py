"""`keras.distribution.DataParallel` on JAX over two devices, and over two processes, gives what one device gives.

Keras fixes its backend, and JAX its devices and cluster, when they start, so every run is a subprocess of
tests/jax_data_parallel_case.py under KERAS_BACKEND=jax (the tests themselves may run on any backend). The fit is
STKD with a teacher, BatchNormalization and the Distiller's seeded mixup draws inside the step. Keras's JAX
trainer jits the step on the global batch (the batch sharded, the variables replicated), so batch statistics,
mixup draws and the loss are the global batch's and the runs agree to float32 rounding. Measured on a 2-core
CPU: losses to a relative 5e-6 (kd_loss; 2.5e-7 for the total), weights to 1.2e-7; mixup lambdas and accuracy
bit-equal.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from stkd_keras import jax_data_parallel

TESTS = Path(__file__).resolve().parent
CASE = str(TESTS / "jax_data_parallel_case.py")
LOSS_KEYS = ("loss", "ce_loss", "kd_loss", "mixup_lambda", "mixed_accuracy")
BACKEND_ERROR = "--strategy data_parallel runs on the JAX backend"


def jax_environment(**variables):
    """This environment on the JAX backend, without any device or cluster setting it may carry."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key != "XLA_FLAGS" and not key.startswith("KERAS_DISTRIBUTION_")
    }
    return {**inherited, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2", **variables}


def parse(returncode, stdout, stderr):
    assert returncode == 0, stderr[-3000:]
    return json.loads(stdout.split("RESULT", 1)[1])


def run_case(mode, environment, timeout=300):
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, CASE, mode], check=False, env=environment, capture_output=True, text=True, timeout=timeout
    )
    print(f"{mode}: {time.perf_counter() - started:.1f} s")
    return parse(run.returncode, run.stdout, run.stderr)


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def series(run, key):
    return [batch[key] for batch in run["batches"]]


def assert_same_fit(run, one):
    """Every batch's logs to rtol 1e-5 and the student's weights (BatchNormalization statistics too) to 1e-6."""
    assert len(run["batches"]) == len(one["batches"]) == 8  # 2 epochs of 4 global batches
    for key in LOSS_KEYS:
        np.testing.assert_allclose(series(run, key), series(one, key), rtol=1e-5, err_msg=key)
    assert len(run["weights"]) == len(one["weights"])
    for reference, weight in zip(one["weights"], run["weights"]):
        np.testing.assert_allclose(np.array(weight), np.array(reference), atol=1e-6)


@pytest.fixture(scope="module")
def one_device():
    one = run_case("one", jax_environment())
    # Zero losses, or no mixup drawn, would match trivially.
    assert min(series(one, "ce_loss")) > 0 and min(series(one, "kd_loss")) > 0
    assert max(series(one, "mixup_lambda")) < 1
    return one


def test_two_devices_in_one_process_match_one_device(one_device):
    run = run_case("data_parallel", jax_environment(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert run["mesh"] == ["cpu:0", "cpu:1"] and run["device_count"] == 2
    assert (run["cluster"], run["process_count"], run["process_index"], run["chief"]) == (False, 1, 0, True)
    assert run["slice"] == [0, 64]  # one process feeds the whole global batch
    assert run["uneven_batch_error"] == (
        "Expected a global batch size divisible by the 2 device(s) of the 1 process(es). Received: global_batch_size=65"
    )
    assert_same_fit(run, one_device)


# Slow (30 s): the default run has two devices in one process against one device, above.
@pytest.mark.slow
def test_two_processes_match_one_device(one_device):
    port = free_port()
    started = time.perf_counter()
    processes = [
        subprocess.Popen(
            [sys.executable, CASE, "data_parallel"],
            env=jax_environment(
                KERAS_DISTRIBUTION_JOB_ADDRESSES=f"localhost:{port}",
                KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                KERAS_DISTRIBUTION_PROCESS_ID=str(index),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=300) for process in processes]
    finally:
        for process in processes:  # one that failed leaves the other waiting for it
            if process.poll() is None:
                process.kill()
                process.communicate()
    print(f"two processes: {time.perf_counter() - started:.1f} s")
    runs = [parse(process.returncode, *output) for process, output in zip(processes, outputs)]
    for index, run in enumerate(runs):
        assert run["cluster"] and (run["process_count"], run["process_index"], run["chief"]) == (2, index, index == 0)
        assert len(run["mesh"]) == run["device_count"] == 2  # one CPU device each, both in the mesh
        assert run["slice"] == [
            32 * index,
            32 * index + 32,
        ]  # process 0 feeds rows 0-31 of each batch of 64, process 1 32-63
        assert_same_fit(run, one_device)


@pytest.fixture
def no_cluster_environment(monkeypatch):
    for name in (jax_data_parallel.JOB_ADDRESSES, jax_data_parallel.NUM_PROCESSES, jax_data_parallel.PROCESS_ID):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_incomplete_or_bad_cluster_description_is_one_clear_error(no_cluster_environment):
    with pytest.raises(
        ValueError, match=r"`num_processes` \(KERAS_DISTRIBUTION_NUM_PROCESSES\) and `process_id` .* are not given"
    ):
        jax_data_parallel.initialize("localhost:1234")
    no_cluster_environment.setenv(jax_data_parallel.JOB_ADDRESSES, "localhost:1234")
    no_cluster_environment.setenv(jax_data_parallel.NUM_PROCESSES, "2")
    with pytest.raises(ValueError, match=r"`process_id` \(KERAS_DISTRIBUTION_PROCESS_ID\) is not given"):
        jax_data_parallel.initialize()
    no_cluster_environment.setenv(jax_data_parallel.PROCESS_ID, "first")
    with pytest.raises(
        ValueError,
        match="KERAS_DISTRIBUTION_PROCESS_ID to be an integer. Received: KERAS_DISTRIBUTION_PROCESS_ID='first'",
    ):
        jax_data_parallel.initialize()
    with pytest.raises(ValueError, match="Received: num_processes=2, process_id=2"):
        jax_data_parallel.initialize(process_id=2)  # the argument wins over the environment


def test_other_backends_are_refused_in_one_sentence(no_cluster_environment):
    if keras.backend.backend() == "jax":  # this process cannot leave JAX: ask a TensorFlow one
        check = "from stkd_keras import jax_data_parallel; jax_data_parallel.data_parallel()"
        environment = {**os.environ, "KERAS_BACKEND": "tensorflow"}
        run = subprocess.run(
            [sys.executable, "-c", check], check=False, env=environment, capture_output=True, text=True, timeout=120
        )
        assert (
            run.returncode != 0
            and f"ValueError: {BACKEND_ERROR} (Keras 3.15's keras.distribution has no tensorflow support);"
            in run.stderr
        )
        return
    calls = (
        jax_data_parallel.data_parallel,
        jax_data_parallel.initialize,
        jax_data_parallel.is_chief,
        lambda: jax_data_parallel.local_batch_slice(64),
    )
    for call in calls:
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == (
            f"{BACKEND_ERROR} (Keras 3.15's keras.distribution has no {keras.backend.backend()} support); "
            "use --backend jax, or --strategy mirrored on TensorFlow."
        )
