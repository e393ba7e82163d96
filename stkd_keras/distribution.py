"""How a training run is spread over devices: one device, all local devices, or several processes and machines.

Two engines, both supported by Keras, one per backend; `setup` picks:
- On TensorFlow, `tf.distribute` strategies (`stkd_keras.tf_strategies`):
  `default` (one device), `mirrored` (all local GPUs) and `multi_worker`
  (the workers named in `TF_CONFIG`; the chief writes the run folder).
- On JAX, `keras.distribution` (`stkd_keras.jax_data_parallel`):
  `data_parallel`, `keras.distribution.DataParallel` over every device of
  every process; several processes or hosts join through
  `keras.distribution.initialize` first. Process 0 writes the run folder.
- On PyTorch (and on any backend with `default`): one device.

Which strategy runs on which backend is checked before Keras is imported
(`stkd_keras.backend_selection.check_strategy`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Callable

from stkd_keras import jax_data_parallel, tf_strategies
from stkd_keras.backend_selection import check_strategy


@contextlib.contextmanager
def worker_directory():
    """A temporary run folder for a worker that is not the chief (removed afterwards)."""
    folder = tempfile.mkdtemp(prefix="stkd-worker-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclasses.dataclass
class Setup:
    """How a run is spread over devices: the scope its variables are created in, and who writes results.

    `process_index` / `process_count` are those of a multi-process JAX run,
    in which each process feeds its share of every global batch.
    """

    strategy: str
    scope: Callable[[], contextlib.AbstractContextManager]
    replicas: int
    chief: bool
    description: str | None = None
    process_index: int = 0
    process_count: int = 1


def setup(name: str, backend: str, cluster: dict | None = None) -> Setup:
    """The `Setup` of strategy `name` on the Keras backend `backend` (see the module docstring).

    `cluster` holds `coordinator_address`, `num_processes` and `process_id`
    for a multi-process JAX run (unset fields come from Keras's environment
    variables). Must run before the process runs a TensorFlow op or a JAX
    computation.

    Raises:
        ValueError: For a strategy the backend cannot run, or a bad cluster description.
    """
    check_strategy(name, backend)
    if backend == "tensorflow":
        strategy = tf_strategies.get_strategy(name)
        description = None
        if name == "mirrored":
            devices = ", ".join(strategy.extended.worker_devices)
            description = f"MirroredStrategy over {strategy.num_replicas_in_sync} device(s): {devices}."
        elif name == "multi_worker":
            task, index = tf_strategies.cluster_task()
            replicas = strategy.num_replicas_in_sync
            description = f"MultiWorkerMirroredStrategy: {replicas} replica(s) in sync; this is {task} {index}."
        chief = tf_strategies.is_chief() if name == "multi_worker" else True
        return Setup(name, strategy.scope, strategy.num_replicas_in_sync, chief, description)
    if name == "data_parallel":
        jax_data_parallel.initialize(**(cluster or {}))
        distribution = jax_data_parallel.data_parallel()
        count, index = jax_data_parallel.process_count(), jax_data_parallel.process_index()
        description = f"keras.distribution.DataParallel over {jax_data_parallel.device_count()} device(s)" + (
            f" in {count} processes; this is process {index}." if count > 1 else "."
        )
        return Setup(
            name,
            distribution.scope,
            jax_data_parallel.device_count(),
            jax_data_parallel.is_chief(),
            description,
            index,
            count,
        )
    return Setup(name, contextlib.nullcontext, 1, True)
