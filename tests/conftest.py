"""Shared fixtures: small real Fashion-MNIST batches and tiny models, on whichever Keras backend runs the tests.

Nothing here imports TensorFlow: the core tests also run on JAX and PyTorch
(tests/test_backends.py starts them there).
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# torch.compile's C++ cache does not key its kernels on ATEN_CPU_CAPABILITY: a kernel compiled with AVX2 vectors is
# reused under `ATEN_CPU_CAPABILITY=default` (the second arithmetic of .ci/run), whose headers lack them, and g++
# fails ("'at::vec' has not been declared"). One cache per capability keeps each run's kernels its own.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR",
    os.path.join(
        tempfile.gettempdir(), f"torchinductor-{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}-{os.getuid()}"
    ),
)

import keras
import numpy as np
import pytest

from stkd_keras import idx
from stkd_keras.models import small_cnn


def pytest_configure(config):
    if idx.find_fashion_mnist_idx() is None:
        raise pytest.UsageError(
            "The tests need Fashion-MNIST in /usr/share/datasets/fashion-mnist: apt-get install dataset-fashion-mnist"
        )


@pytest.fixture(autouse=True)
def _float32_policy():
    """Every test starts and ends under the float32 policy, whatever it changed."""
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def fashion_arrays():
    """2000 training and 1000 test Fashion-MNIST images, normalised, with integer labels."""
    directory = idx.find_fashion_mnist_idx()

    def take(split, count):
        images, labels = idx.read_fashion_mnist_idx(directory, split)
        order = np.random.default_rng(0).permutation(len(labels))[:count]
        normalised = (images[order].astype("float32") / 255.0 - idx.FASHION_MNIST_MEAN[0]) / idx.FASHION_MNIST_STD[0]
        return normalised, labels[order]

    return take("train", 2000), take("test", 1000)


@pytest.fixture(scope="session")
def trained_teacher(fashion_arrays):
    """A cnn16 trained briefly on the Fashion-MNIST subset (about 0.74 test accuracy)."""
    (x, y), _ = fashion_arrays
    keras.utils.set_random_seed(0)
    teacher = small_cnn(16, (28, 28, 1), 10, name="teacher_cnn16")
    teacher.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    teacher.fit(x, y, batch_size=32, epochs=3, verbose=0)
    return teacher
