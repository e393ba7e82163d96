"""The STKD fit that tests/test_jax_data_parallel.py compares across devices and processes (run as a script).

`python tests/jax_data_parallel_case.py MODE` under KERAS_BACKEND=jax prints RESULT{json}. The test sets up the
devices in the environment before JAX starts (XLA_FLAGS, KERAS_DISTRIBUTION_*). MODE:
- `one`: no distribution, one CPU device: the reference.
- `data_parallel`: `jax_data_parallel.initialize()` (a cluster when the environment names one) and
  `data_parallel()`; every process feeds its rows (`local_batch_slice`) of each global batch of 64.

STKD with a teacher, BatchNormalization in both networks and the Distiller's seeded mixup draws inside the
step: under Keras's JAX trainer all of them see the global batch, so every mode must report the same.
TensorFlow is blocked from import: the JAX path needs none.
"""

import sys

sys.modules["tensorflow"] = None

import json
import time

import keras

from stkd_keras import Distiller, idx, jax_data_parallel
from stkd_keras.models import small_cnn

GLOBAL_BATCH = 64
IMAGES = 256  # 4 global batches an epoch


class BatchLogs(keras.callbacks.Callback):
    """Keeps the logs of every training batch (the loss terms are running means over the epoch, as Keras reports)."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_end(self, batch, logs=None):
        self.batches.append({key: float(value) for key, value in logs.items()})


def fashion_mnist():
    images, labels = idx.read_fashion_mnist_idx(idx.find_fashion_mnist_idx(), "train")
    x = (images[:IMAGES].astype("float32") / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0]
    return x, labels[:IMAGES]


def rows_of_every_batch(array, start, stop):
    """Rows start:stop of each consecutive global batch of `array`, concatenated in order."""
    batches = array.reshape(-1, GLOBAL_BATCH, *array.shape[1:])
    return batches[:, start:stop].reshape(-1, *array.shape[1:])


def main(mode):
    started = time.perf_counter()
    result = {"mode": mode}
    start, stop = 0, GLOBAL_BATCH
    if mode == "data_parallel":
        result["cluster"] = jax_data_parallel.initialize()
        distribution = jax_data_parallel.data_parallel()
        start, stop = jax_data_parallel.local_batch_slice(GLOBAL_BATCH)
        result.update(
            mesh=[str(device) for device in distribution.device_mesh.devices.flatten()],
            process_index=jax_data_parallel.process_index(),
            process_count=jax_data_parallel.process_count(),
            device_count=jax_data_parallel.device_count(),
            chief=jax_data_parallel.is_chief(),
        )
        try:
            jax_data_parallel.local_batch_slice(GLOBAL_BATCH + 1)
        except ValueError as error:
            result["uneven_batch_error"] = str(error)
    elif mode != "one":
        raise SystemExit(f"unknown mode {mode!r}")
    result["slice"] = [start, stop]
    x, y = fashion_mnist()
    x, y = rows_of_every_batch(x, start, stop), rows_of_every_batch(y, start, stop)

    keras.utils.set_random_seed(1)
    teacher = small_cnn(8, (28, 28, 1), 10, name="teacher")
    keras.utils.set_random_seed(2)
    student = small_cnn(4, (28, 28, 1), 10, name="student")
    distiller = Distiller(student, teacher, method="stkd", seed=0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), metrics=["accuracy"])
    logs = BatchLogs()
    distiller.fit(x, y, batch_size=stop - start, shuffle=False, epochs=2, verbose=0, callbacks=[logs])
    result["batches"] = logs.batches
    # get_weights: trainable and BatchNormalization's moving statistics (fully replicated, so every process reads them).
    result["weights"] = [w.tolist() for w in student.get_weights()]
    result["seconds"] = time.perf_counter() - started
    print("RESULT" + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
