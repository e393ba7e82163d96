"""Data parallelism on the JAX backend through `keras.distribution`: several devices, several processes.

Keras's JAX trainer runs each step under `jax.jit` on the *global* batch:
`keras.distribution.DataParallel` replicates every variable on a 1-D mesh of
devices and shards the batch along it, and XLA inserts the reductions. The
loss, BatchNormalization statistics and the mixup draws are those of the
global batch, so a run over N devices reports what one device reports on the
same global batch, to float32 rounding (tests/test_jax_data_parallel.py). No
Keras internals are patched.

Several processes (hosts, or processes on one host): every process runs the
same command with its own process id. `initialize` starts the JAX cluster
(`keras.distribution.initialize`), `data_parallel` lays the mesh over the
devices of all processes, and each process feeds its own rows of every
global batch (`local_batch_slice`); the trainer assembles the global array
(`jax.make_array_from_process_local_data`). Process 0 writes the results
(`is_chief`). On CPU the processes exchange values through JAX's CPU
collectives: Gloo over TCP, JAX's default (`jax_cpu_collectives_implementation`).

JAX is imported only inside the functions, after the Keras backend is known
to be JAX; TensorFlow is never imported.
"""

from __future__ import annotations

import os

from stkd_keras.backend_selection import check_strategy

JOB_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"


def require_jax() -> None:
    """Raises a one-sentence ValueError unless the Keras backend is JAX (`backend_selection.check_strategy`)."""
    import keras

    check_strategy("data_parallel", keras.backend.backend())


def _environment_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"Expected the environment variable {name} to be an integer. Received: {name}={raw!r}"
        ) from None


def _cluster_arguments(
    coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> tuple[str | None, int | None, int | None]:
    """`initialize`'s three arguments, each left None read from its environment variable; all three or none.

    Raises:
        ValueError: When only some of the three are given, or they are out of range.
    """
    address = (
        coordinator_address if coordinator_address is not None else os.environ.get(JOB_ADDRESSES, "").strip() or None
    )
    count = num_processes if num_processes is not None else _environment_int(NUM_PROCESSES)
    index = process_id if process_id is not None else _environment_int(PROCESS_ID)
    given = {
        f"`coordinator_address` ({JOB_ADDRESSES})": address,
        f"`num_processes` ({NUM_PROCESSES})": count,
        f"`process_id` ({PROCESS_ID})": index,
    }
    missing = [name for name, value in given.items() if value is None]
    if 0 < len(missing) < 3:
        raise ValueError(
            f"A multi-process run needs the coordinator address, the number of processes and this process's id, but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not given; pass all three or none."
        )
    if count is not None and not (
        isinstance(count, int) and isinstance(index, int) and count >= 1 and 0 <= index < count
    ):
        raise ValueError(
            f"Expected `num_processes` >= 1 and 0 <= `process_id` < num_processes. Received: num_processes={count!r}, "
            f"process_id={index!r}"
        )
    return address, count, index


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Starts the JAX cluster of a multi-process run; a single process (nothing given) is left as it is.

    Every argument left None is read from the environment variable Keras
    documents for it: KERAS_DISTRIBUTION_JOB_ADDRESSES (the coordinator's
    "host:port", process 0; or all processes' addresses, comma-separated),
    KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID. Call
    it before anything touches a JAX device, and before `data_parallel`.

    Args:
        coordinator_address: "host:port" of process 0, where the cluster meets.
        num_processes: How many processes the run has.
        process_id: This process's id, 0 to num_processes - 1.

    Returns:
        True when a cluster was started (or was already), False for a single process.

    Raises:
        ValueError: When only some of the three are given, they are out of
            range, the backend is not JAX, or JAX cannot start the cluster.

    Example:
    ```python
    jax_data_parallel.initialize("10.0.0.1:1234", num_processes=2, process_id=0)  # process 1 passes 1
    distribution = jax_data_parallel.data_parallel()
    ```
    """
    address, count, index = _cluster_arguments(coordinator_address, num_processes, process_id)
    require_jax()
    if count is None:
        return False
    import jax
    import keras

    if jax.distributed.is_initialized():
        return True
    # JAX 0.10 defaults to Gloo already; an older default (none) would leave CPU processes unable to reduce.
    # The option configures the CPU client alone, so it is set without asking which platform runs: asking would
    # start the backends, after which the cluster can no longer be joined.
    if not jax.config.jax_cpu_collectives_implementation:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        keras.distribution.initialize(address, count, index)
    except RuntimeError as error:
        raise ValueError(f"Cannot start the JAX cluster at {address} as process {index} of {count}: {error}") from None
    return True


def data_parallel(auto_shard_dataset: bool = False):
    """Sets and returns a `keras.distribution.DataParallel` over every device of every process.

    Call it before building the models and compiling (variables are laid out
    on the mesh when they are created), and after `initialize` in a
    multi-process run.

    Args:
        auto_shard_dataset: False (the default): each process feeds its own
            rows of every global batch (`local_batch_slice`), which is what
            numpy arrays need. True: Keras splits a `tf.data.Dataset` of
            global batches between the processes itself.

    Returns:
        The distribution, now Keras's global one.

    Raises:
        ValueError: When the Keras backend is not JAX.
    """
    require_jax()
    import keras

    distribution = keras.distribution.DataParallel(
        devices=keras.distribution.list_devices(), auto_shard_dataset=auto_shard_dataset
    )
    keras.distribution.set_distribution(distribution)
    return distribution


def process_index() -> int:
    """This process's id in the cluster: 0 in a single-process run."""
    require_jax()
    import jax

    return jax.process_index()


def process_count() -> int:
    """How many processes the cluster has: 1 in a single-process run."""
    require_jax()
    import jax

    return jax.process_count()


def is_chief() -> bool:
    """Whether this process writes the results: process 0."""
    return process_index() == 0


def device_count() -> int:
    """How many devices of the default kind (GPU/TPU, else CPU) all processes have together."""
    require_jax()
    import keras

    return keras.distribution.get_device_count()


def _mesh_devices() -> list[str]:
    """The devices the batch is split over: the current DataParallel's, or those `data_parallel` would take."""
    import keras

    distribution = keras.distribution.distribution()
    if isinstance(distribution, keras.distribution.DataParallel):
        return [str(device) for device in distribution.device_mesh.devices.flatten()]
    return keras.distribution.list_devices()


def local_batch_slice(global_batch_size: int) -> tuple[int, int]:
    """The rows (start, stop) of every global batch that this process feeds.

    Each device of the mesh takes global_batch_size / devices consecutive
    rows, in mesh order; a process feeds the rows of its own devices. With
    one process that is the whole batch.

    Args:
        global_batch_size: The batch size of one step over all processes.

    Returns:
        (start, stop): feed `global_batch[start:stop]`, i.e. `fit(...,
        batch_size=stop - start)` on this process's rows.

    Raises:
        ValueError: When the global batch does not split evenly over the
            devices (and so the processes), or the backend is not JAX.
    """
    require_jax()
    import jax

    devices = _mesh_devices()
    if not isinstance(global_batch_size, int) or global_batch_size < 1 or global_batch_size % len(devices):
        raise ValueError(
            f"Expected a global batch size divisible by the {len(devices)} device(s) of the {jax.process_count()} "
            "process(es). "
            f"Received: global_batch_size={global_batch_size!r}"
        )
    local = {f"{device.platform}:{device.id}" for device in jax.local_devices()}
    positions = [position for position, device in enumerate(devices) if device in local]
    if not positions or positions != list(range(positions[0], positions[-1] + 1)):
        raise ValueError(f"This process's devices {sorted(local)} are not one consecutive block of the mesh {devices}.")
    rows = global_batch_size // len(devices)
    return positions[0] * rows, (positions[-1] + 1) * rows
