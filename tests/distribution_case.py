"""The one KD fit both distribution tests run (imported by their subprocesses, which set up devices first).

No BatchNormalization (per-replica batch statistics legitimately differ from global ones) and method KD
(no mixup draws, which are per replica), so any strategy must report what one device reports.
"""

import keras
import numpy as np
import tensorflow as tf

from stkd_keras.distiller import Distiller


def net(seed, name):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x), name=name)


def fit(strategy) -> dict:
    """Two epochs of KD on a fixed batch stream under `strategy`: its history, student weights and replica count."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 5, 128)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    with strategy.scope():
        student = net(2, "student")
        distiller = Distiller(student, net(1, "teacher"), method="kd", temperature=2.0, ce_weight=0.5, kd_weight=0.5)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5), metrics=["accuracy"])
    history = distiller.fit(data, epochs=2, verbose=0, shuffle=False)
    result = {key: [float(v) for v in values] for key, values in history.history.items()}
    result["weights"] = [w.tolist() for w in student.get_weights()]
    result["replicas"] = strategy.num_replicas_in_sync
    return result
