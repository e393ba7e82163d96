"""The Distiller on whichever Keras backend runs the tests (tests/test_backends.py runs it on JAX and PyTorch too)."""

import dataclasses
import math
import zipfile

import keras
import numpy as np
import pytest
from keras import ops

import learning

from stkd_keras import Distiller, small_cnn
from stkd_keras.methods import DistillationMethod, Hyperparameters, LossTerm, get_method, register_method

BASE_METHODS = ("ce", "kd", "mixup", "kd_mixup_naive", "stkd")
BACKEND = keras.backend.backend()


def make_student(seed=1, width=8, input_shape=(28, 28, 1), classes=10, **kwargs):
    keras.utils.set_random_seed(seed)
    return small_cnn(width, input_shape, classes, name=f"student_cnn{width}", **kwargs)


def distiller_for(method, teacher, **kwargs):
    return Distiller(
        make_student(), teacher if get_method(method).needs_teacher else None, method=method, seed=0, **kwargs
    )


def weights_of(model):
    return [np.array(keras.ops.convert_to_numpy(w)) for w in model.weights]


def numpy_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def numpy_kd(teacher, student, temperature):
    log_p_t, log_p_s = numpy_log_softmax(teacher / temperature), numpy_log_softmax(student / temperature)
    return temperature**2 * (np.exp(log_p_t) * (log_p_t - log_p_s)).sum(axis=-1)


def to_numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


@pytest.mark.learning
@pytest.mark.parametrize("method", BASE_METHODS)
def test_each_method_learns_fashion_mnist(method, fashion_arrays, trained_teacher):
    (x, y), (x_test, y_test) = fashion_arrays
    distiller = distiller_for(method, trained_teacher)
    epochs, batch_size = 3, 32
    # Cosine decay to zero ends on a settled model: at a constant rate the weakest method's accuracy swung by
    # 0.06 from one epoch to the next, and the last epoch fell wherever the swing left it.
    schedule = keras.optimizers.schedules.CosineDecay(1e-2, decay_steps=epochs * math.ceil(len(x) / batch_size))
    distiller.compile(optimizer=keras.optimizers.Adam(schedule), metrics=["accuracy"])
    teacher_before = weights_of(trained_teacher)
    student_before = weights_of(distiller.student)
    untrained = learning.accuracy(distiller.student, x_test, y_test)
    history = distiller.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, validation_data=(x_test, y_test))
    # The line is the untrained student's accuracy + 0.095 (tests/learning.py). Seen on AMD EPYC (Zen 3,
    # AVX2) under TensorFlow with oneDNN on and off, PyTorch with ATEN_CPU_CAPABILITY=default and avx2, and JAX:
    # untrained 0.09 (TF), 0.13 (JAX), 0.20 (PyTorch); trained ce 0.69-0.73, mixup 0.69-0.71, kd 0.55-0.57,
    # stkd 0.54-0.55, kd_mixup_naive 0.35-0.43 (its teacher sees clean images while the student sees mixed
    # ones: the KD target belongs to the other image in about half the batches). Least margin left: 0.056,
    # kd_mixup_naive on PyTorch with portable kernels (0.348 against 0.292).
    learning.assert_learned(f"{method} on {BACKEND}", untrained, history.history["val_accuracy"][-1], len(y_test))
    unit = get_method(method)
    # Training accuracy against mixed labels is named for what it is; validation keeps Keras's name.
    training_accuracy = "mixed_accuracy" if unit.mixes else "accuracy"
    expected_keys = {"loss", "ce_loss", training_accuracy, "val_loss", "val_ce_loss", "val_accuracy"}
    expected_keys |= {"kd_loss", "val_kd_loss"} if unit.needs_teacher else set()
    expected_keys |= {"mixup_lambda"} if unit.mixes else set()
    assert expected_keys <= set(history.history) and "val_mixup_lambda" not in history.history
    assert {"accuracy", "mixed_accuracy"} - {training_accuracy} & set(history.history) == set()
    assert not any(key.startswith("val_mixed_") for key in history.history)
    for before, after in zip(teacher_before, weights_of(trained_teacher)):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(b, a) for b, a in zip(student_before, weights_of(distiller.student)))
    # call / predict / evaluate use the student on clean images.
    np.testing.assert_allclose(
        distiller.predict(x_test[:8], verbose=0), distiller.student.predict(x_test[:8], verbose=0), atol=1e-6
    )


def test_ce_gives_the_same_update_as_plain_fit(fashion_arrays):
    (x, y), _ = fashion_arrays
    x, y = x[:64], y[:64]
    plain = make_student()
    distilled = make_student()
    distilled.set_weights(plain.get_weights())
    plain.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    plain.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    distiller = Distiller(distilled, method="ce")
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), distilled.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_stkd_teacher_sees_the_mixed_images_and_naive_the_clean_ones(fashion_arrays, trained_teacher):
    (x, _), _ = fashion_arrays
    images = x[:16]
    for method, teacher_sees_mixed in (("stkd", True), ("kd_mixup_naive", False)):
        distiller = Distiller(make_student(), trained_teacher, method=method, seed=3)
        outputs = distiller(images, training=True)
        lam, permutation = float(to_numpy(outputs["lam"])), to_numpy(outputs["permutation"])
        assert sorted(permutation.tolist()) == list(range(16)) and 0 <= lam <= 1
        mixed = lam * images + (1 - lam) * images[permutation]
        seen = mixed if teacher_sees_mixed else images
        np.testing.assert_allclose(
            to_numpy(outputs["teacher_logits"]), to_numpy(trained_teacher(seen, training=False)), atol=1e-4
        )
        assert "clean_logits" not in outputs  # no clean-image term asked for: no extra student pass


def test_stkd_loss_of_one_step_equals_numpy(fashion_arrays, trained_teacher):
    """compute_loss on the step's outputs against the STKD loss worked out in numpy, sample weights included."""
    (x, y), _ = fashion_arrays
    images, labels, weights = x[:32], y[:32], np.linspace(0.5, 1.5, 32).astype("float32")
    distiller = Distiller(
        make_student(), trained_teacher, method="stkd", temperature=2.0, ce_weight=0.3, kd_weight=0.7, seed=5
    )
    outputs = distiller(images, training=True)
    value = distiller.compute_loss(images, labels, outputs, sample_weight=weights, training=True)
    lam, p = float(to_numpy(outputs["lam"])), to_numpy(outputs["permutation"])
    one_hot = np.eye(10, dtype="float32")[labels]
    mixed_labels, mixed_weights = lam * one_hot + (1 - lam) * one_hot[p], lam * weights + (1 - lam) * weights[p]
    student_logits, teacher_logits = to_numpy(outputs["logits"]), to_numpy(outputs["teacher_logits"])
    per_sample = 0.3 * -(mixed_labels * numpy_log_softmax(student_logits)).sum(-1) + 0.7 * numpy_kd(
        teacher_logits, student_logits, 2.0
    )
    assert float(to_numpy(value)) == pytest.approx(float(np.mean(per_sample * mixed_weights)), rel=1e-5)


def test_training_accuracy_is_scored_on_the_mixed_labels_and_named_so(fashion_arrays, trained_teacher):
    """A mixing method's training step reports `mixed_accuracy`, numpy's accuracy on the mixed labels.

    Evaluation reports `accuracy`, on the real labels.
    """
    (x, y), _ = fashion_arrays
    images, labels = x[:64], y[:64]
    student = make_student()
    for seed in range(50):  # a draw with lambda < 0.5, where most mixed labels' argmax is the other image's class
        distiller = Distiller(student, trained_teacher, method="stkd", seed=seed)
        outputs = distiller(images, training=True)
        if 0.1 < float(to_numpy(outputs["lam"])) < 0.4:
            break
    distiller.compile(
        optimizer="sgd", metrics=["accuracy", keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy")]
    )
    logs = distiller.compute_metrics(images, labels, outputs)
    lam, p = float(to_numpy(outputs["lam"])), to_numpy(outputs["permutation"])
    one_hot = np.eye(10, dtype="float32")[labels]
    mixed_labels, logits = lam * one_hot + (1 - lam) * one_hot[p], to_numpy(outputs["logits"])
    assert (mixed_labels.argmax(-1) != labels).sum() > 16
    assert {"mixed_accuracy", "mixed_top5_accuracy", "mixup_lambda"} <= set(logs) and "accuracy" not in logs
    expected = np.mean(mixed_labels.argmax(-1) == logits.argmax(-1))
    assert float(to_numpy(logs["mixed_accuracy"])) == pytest.approx(expected, abs=1e-6)
    distiller.reset_metrics()
    clean_logits = to_numpy(distiller(images, training=False))
    logs = distiller.compute_metrics(images, labels, clean_logits)
    assert "accuracy" in logs and not any(key.startswith("mixed_") for key in logs)
    assert float(to_numpy(logs["accuracy"])) == pytest.approx(np.mean(labels == clean_logits.argmax(-1)), abs=1e-6)


def test_clean_kd_term_is_added_and_reported(fashion_arrays, trained_teacher):
    (x, y), _ = fashion_arrays
    distiller = distiller_for("stkd", trained_teacher, clean_kd_weight=0.5)
    images, labels = x[:32], y[:32]
    outputs = distiller(images, training=True)
    # The clean term runs the student and the teacher on the un-mixed batch.
    np.testing.assert_allclose(
        to_numpy(outputs["clean_teacher_logits"]), to_numpy(trained_teacher(images, training=False)), atol=1e-4
    )
    value = float(to_numpy(distiller.compute_loss(images, labels, outputs, training=True)))
    without = Distiller(distiller.student, trained_teacher, method="stkd", seed=0)
    expected = float(to_numpy(without.compute_loss(images, labels, outputs, training=True)))
    clean = numpy_kd(to_numpy(outputs["clean_teacher_logits"]), to_numpy(outputs["clean_logits"]), 4.0).mean()
    assert value == pytest.approx(expected + 0.5 * clean, rel=1e-5)
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    history = distiller.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0, validation_data=(x[:64], y[:64]))
    assert history.history["clean_kd_loss"][0] > 0
    # In evaluation the batch is clean: the clean term is the KD term, reported and not added twice.
    assert history.history["val_clean_kd_loss"][0] == pytest.approx(history.history["val_kd_loss"][0], rel=1e-6)
    assert history.history["val_loss"][0] == pytest.approx(
        0.1 * history.history["val_ce_loss"][0] + 0.9 * history.history["val_kd_loss"][0], rel=1e-4
    )


def test_works_with_callbacks_and_sample_weights(fashion_arrays, trained_teacher, tmp_path):
    (x, y), (x_test, y_test) = fashion_arrays
    distiller = distiller_for("stkd", trained_teacher)
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    log = tmp_path / "log.csv"
    distiller.fit(
        x[:256],
        y[:256],
        sample_weight=np.ones(256, "float32"),
        batch_size=64,
        epochs=2,
        verbose=0,
        validation_data=(x_test[:128], y_test[:128]),
        callbacks=[keras.callbacks.CSVLogger(str(log)), keras.callbacks.EarlyStopping(monitor="val_loss", patience=5)],
    )
    header = log.read_text().splitlines()[0].split(",")
    assert {"epoch", "loss", "ce_loss", "kd_loss", "val_accuracy", "mixup_lambda"} <= set(header)


class _PyDataset(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size):
        super().__init__()
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __getitem__(self, index):
        part = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.x[part], self.y[part]


def test_one_hot_labels_and_datasets_are_accepted(fashion_arrays, trained_teacher):
    (x, y), _ = fashion_arrays
    dataset = _PyDataset(x[:128], np.eye(10, dtype="float32")[y[:128]], 32)
    distiller = distiller_for("kd", trained_teacher)
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    distiller.fit(dataset, epochs=1, verbose=0)
    results = distiller.evaluate(dataset, verbose=0, return_dict=True)
    assert 0 <= results["accuracy"] <= 1 and np.isfinite(results["kd_loss"])
    # Integer labels give the same evaluation as their one-hot form.
    integer = distiller.evaluate(_PyDataset(x[:128], y[:128], 32), verbose=0, return_dict=True)
    assert integer["loss"] == pytest.approx(results["loss"], rel=1e-5) and integer["accuracy"] == results["accuracy"]


def test_fit_on_a_tf_data_pipeline_draws_no_shuffle_warning(fashion_arrays, trained_teacher):
    """The README's example fits on a tf.data pipeline: Keras warned that its default shuffle=True was ignored."""
    import warnings

    import tensorflow as tf

    (x, y), _ = fashion_arrays
    dataset = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(32)
    distiller = distiller_for("kd", trained_teacher)
    distiller.compile(optimizer="sgd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        distiller.fit(dataset, epochs=1, verbose=0)
    with pytest.warns(
        UserWarning, match="shuffle=True` was passed, but will be ignored"
    ):  # asked for, it is Keras's to answer
        distiller.fit(dataset, epochs=1, verbose=0, shuffle=True)


def test_student_saves_and_loads_alone(tmp_path, trained_teacher, fashion_arrays):
    (x, y), _ = fashion_arrays
    distiller = distiller_for("stkd", trained_teacher)
    distiller.compile(optimizer="sgd")
    distiller.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0)
    path = tmp_path / "student.keras"
    distiller.student.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, keras.Model) and not isinstance(restored, Distiller)
    # A plain Keras model: nothing in it needs stkd_keras to load.
    with zipfile.ZipFile(path) as archive:
        assert "stkd_keras" not in archive.read("config.json").decode()
    np.testing.assert_allclose(
        to_numpy(restored(x[:4], training=False)), to_numpy(distiller.student(x[:4], training=False)), atol=1e-6
    )


def test_whole_distiller_saves_and_loads(tmp_path, trained_teacher, fashion_arrays):
    """A `.keras` file of the Distiller itself: method, hyperparameters, both models, the epoch and step counters."""
    (x, y), _ = fashion_arrays
    distiller = distiller_for("stkd", trained_teacher, temperature=2.0)
    distiller.compile(optimizer="sgd")
    distiller.fit(x[:128], y[:128], batch_size=64, epochs=2, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    restored = keras.saving.load_model(path, compile=False)
    assert isinstance(restored, Distiller) and restored.method == "stkd" and restored.hyperparameters.temperature == 2.0
    assert int(to_numpy(restored.step)) == 4 and int(to_numpy(restored.epoch)) == 1
    np.testing.assert_allclose(
        to_numpy(restored.predict(x[:8], verbose=0)), to_numpy(distiller.predict(x[:8], verbose=0)), atol=1e-6
    )
    np.testing.assert_allclose(to_numpy(restored.teacher(x[:8])), to_numpy(trained_teacher(x[:8])), atol=1e-6)
    assert not restored.teacher.trainable


def test_config_round_trip(trained_teacher):
    distiller = Distiller(
        make_student(),
        trained_teacher,
        method="kd_mixup_naive",
        temperature=2.0,
        ce_weight=0.2,
        kd_weight=0.8,
        mixup_alpha=0.4,
        lambda_per_sample=True,
        clean_kd_weight=0.1,
        seed=9,
        name="my_distiller",
    )
    config = distiller.get_config()
    restored = Distiller.from_config(config)
    assert restored.method == "kd_mixup_naive" and restored.seed == 9 and restored.name == "my_distiller"
    assert restored.hyperparameters == distiller.hyperparameters
    assert dataclasses.asdict(restored.hyperparameters) == {
        "temperature": 2.0,
        "logit_standardization": False,
        "ce_weight": 0.2,
        "kd_weight": 0.8,
        "mixup_alpha": 0.4,
        "lambda_per_sample": True,
        "clean_kd_weight": 0.1,
    }
    assert restored.student.name == distiller.student.name and restored.teacher.name == trained_teacher.name
    assert restored.student.count_params() == distiller.student.count_params()
    # A preset keeps its name and its own defaults.
    preset = Distiller.from_config(Distiller(make_student(), trained_teacher, method="stkd_clean_kd").get_config())
    assert preset.method == "stkd_clean_kd" and preset.hyperparameters.clean_kd_weight == 0.5


def test_jit_compiled_step(fashion_arrays, trained_teacher):
    """`jit_compile=True`: XLA on TensorFlow and JAX, torch.compile on PyTorch; each step draws a new mixup."""
    (x, y), _ = fashion_arrays
    distiller = distiller_for("stkd", trained_teacher, lambda_per_sample=True)
    distiller.compile(optimizer="sgd", metrics=["accuracy"], jit_compile=True)
    history = distiller.fit(x[:256], y[:256], batch_size=64, epochs=2, verbose=0)
    assert distiller.jit_compile is True
    assert np.isfinite(history.history["loss"]).all() and min(history.history["kd_loss"]) > 0
    # Per-sample Beta(0.2, 0.2) draws: mean 1/2; 256 draws a epoch give a standard error of 0.026.
    assert history.history["mixup_lambda"][0] != history.history["mixup_lambda"][1]
    assert abs(np.mean(history.history["mixup_lambda"]) - 0.5) < 0.1


@pytest.mark.parametrize(
    "policy",
    # Loss-scaled float16 is TensorFlow's mixed-precision path; bfloat16 runs on every backend.
    ["mixed_bfloat16", *(["mixed_float16"] if BACKEND == "tensorflow" else [])],
)
def test_mixed_precision_step(fashion_arrays, trained_teacher, policy):
    (x, y), _ = fashion_arrays
    keras.mixed_precision.set_global_policy(policy)
    student = make_student()
    assert student.get_layer("stage1_conv").compute_dtype == policy.split("_")[1]
    distiller = Distiller(student, trained_teacher, method="stkd", seed=0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
    before = weights_of(student)
    history = distiller.fit(x[:512], y[:512], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and history.history["kd_loss"][0] > 0
    assert any(not np.array_equal(b, a) for b, a in zip(before, weights_of(student)))
    assert keras.backend.standardize_dtype(student(x[:2]).dtype) == "float32"  # the logits layer stays float32
    # The labels and the mixup arithmetic stay float32: the mixed labels still sum to one exactly enough.
    outputs = distiller(x[:8], training=True)
    assert keras.backend.standardize_dtype(outputs["lam"].dtype) == "float32"


def test_regularization_losses_are_added(fashion_arrays):
    (x, y), _ = fashion_arrays
    student = make_student()
    regularized = keras.Sequential(
        [student, keras.layers.Dense(10, kernel_regularizer=keras.regularizers.L2(0.5), name="extra")]
    )
    regularized.build((None, 28, 28, 1))
    distiller = Distiller(regularized, method="ce")
    logits = regularized(x[:16], training=False)
    value = float(to_numpy(distiller.compute_loss(x[:16], y[:16], logits, training=False)))
    ce = -numpy_log_softmax(to_numpy(logits))[np.arange(16), y[:16]].mean()
    penalty = 0.5 * float(np.sum(to_numpy(regularized.get_layer("extra").kernel) ** 2))
    assert value == pytest.approx(ce + penalty, rel=1e-5)


@register_method
class _Probe(DistillationMethod):
    """A test method: reports the epoch and step its loss terms see, with weight 0 beside the cross-entropy."""

    name = "_test_probe"
    description = "test probe of the batch context"
    hyperparameters = Hyperparameters

    def term_names(self, hyperparameters):
        return ("ce_loss", "epoch_seen", "step_seen")

    def loss_terms(self, context, hyperparameters):
        from stkd_keras.methods.ce import cross_entropy

        return {
            "ce_loss": LossTerm(cross_entropy(context)),
            "epoch_seen": LossTerm(ops.cast(context.epoch, "float32"), 0.0),
            "step_seen": LossTerm(ops.cast(context.step, "float32"), 0.0),
        }


@pytest.mark.parametrize("jit_compile", [False, *([True] if BACKEND != "torch" else [])])
def test_context_carries_the_epoch_and_step(fashion_arrays, jit_compile):
    """A registered method reads the epoch of fit and the step count inside the (compiled) step."""
    (x, y), _ = fashion_arrays
    distiller = Distiller(make_student(), method="_test_probe")
    distiller.compile(optimizer="sgd", jit_compile=jit_compile)
    history = distiller.fit(x[:256], y[:256], batch_size=64, epochs=3, initial_epoch=1, verbose=0)
    # Epochs 1 and 2 (initial_epoch=1), 4 steps each: steps 0..3 then 4..7.
    assert history.history["epoch_seen"] == [1.0, 2.0]
    assert history.history["step_seen"] == [1.5, 5.5]
    assert int(to_numpy(distiller.step)) == 8 and int(to_numpy(distiller.epoch)) == 2


def test_fit_keeps_the_epoch_with_a_callback_list_too(fashion_arrays):
    (x, y), _ = fashion_arrays
    distiller = Distiller(make_student(), method="_test_probe")
    distiller.compile(optimizer="sgd")
    callbacks = keras.callbacks.CallbackList([keras.callbacks.History()], model=distiller)
    distiller.fit(x[:128], y[:128], batch_size=64, epochs=2, verbose=0, callbacks=callbacks)
    assert int(to_numpy(distiller.epoch)) == 1


def test_validation_errors(trained_teacher):
    student = make_student()
    with pytest.raises(ValueError, match="Expected `method` to be one of .*'stkd'.*Received: method='hinton'"):
        Distiller(student, trained_teacher, method="hinton")
    with pytest.raises(ValueError, match="uses no teacher.*Received: teacher='teacher_cnn16'"):
        Distiller(student, trained_teacher, method="ce")
    with pytest.raises(ValueError, match="distils from a teacher.*Received: teacher=None"):
        Distiller(student, None, method="kd")
    with pytest.raises(ValueError, match="temperature=-1"):
        Distiller(student, trained_teacher, method="kd", temperature=-1)
    with pytest.raises(ValueError, match="at least one loss weight.*ce_weight=0, kd_weight=0"):
        Distiller(student, trained_teacher, method="stkd", ce_weight=0, kd_weight=0)
    with pytest.raises(ValueError, match="mixup_alpha=0"):
        Distiller(student, trained_teacher, method="stkd", mixup_alpha=0)
    with pytest.raises(
        ValueError,
        match=r"Method 'kd' has no hyperparameter `clean_kd_weight` "
        r"\(its hyperparameters: temperature, logit_standardization, ce_weight, kd_weight\)",
    ):
        Distiller(student, trained_teacher, method="kd", clean_kd_weight=0.5)
    with pytest.raises(ValueError, match="Method 'ce' has no hyperparameter `temperature`"):
        Distiller(student, method="ce", temperature=2.0)
    with pytest.raises(ValueError, match=r"input shapes must match.*\(28, 28, 1\).*\(32, 32, 3\)"):
        Distiller(make_student(input_shape=(32, 32, 3)), trained_teacher, method="kd")
    with pytest.raises(ValueError, match=r"output shapes must match.*\(10,\).*\(5,\)"):
        Distiller(make_student(classes=5), trained_teacher, method="stkd")
    distiller = Distiller(student, trained_teacher, method="kd")
    with pytest.raises(ValueError, match="do not pass `loss`"):
        distiller.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match=r"Expected labels of shape \(batch,\) or \(batch, 10\)"):
        distiller.compute_loss(np.zeros((2, 28, 28, 1), "float32"), np.zeros((2, 3, 4)), training=False)
