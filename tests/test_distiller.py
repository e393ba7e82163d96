import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from stkd_keras import Distiller, losses, small_cnn
from stkd_keras.distiller import METHODS, TEACHER_METHODS


def make_student(seed=1, width=8, input_shape=(28, 28, 1), classes=10):
    keras.utils.set_random_seed(seed)
    return small_cnn(width, input_shape, classes, name=f"student_cnn{width}")


def distiller_for(method, teacher, **kwargs):
    return Distiller(make_student(), teacher if method in TEACHER_METHODS else None, method=method, seed=0, **kwargs)


def weights_of(model):
    return [np.array(w) for w in model.weights]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_fashion_mnist(method, fashion_arrays, trained_teacher):
    (x, y), (x_test, y_test) = fashion_arrays
    distiller = distiller_for(method, trained_teacher)
    distiller.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"])
    teacher_before = weights_of(trained_teacher)
    student_before = weights_of(distiller.student)
    history = distiller.fit(x, y, batch_size=32, epochs=3, verbose=0, validation_data=(x_test, y_test))
    # Chance is 0.10; on 1000 test images one standard deviation of chance accuracy is about 0.01, so
    # 0.30 is far above it. (Seen: ce/mixup ~0.65-0.69, kd/stkd ~0.58-0.59, kd_mixup_naive ~0.38-0.50:
    # with w_ce = 0.1 the teacher methods start slower.)
    assert history.history["val_accuracy"][-1] > 0.3
    expected_keys = {"loss", "ce_loss", "accuracy"} | ({"kd_loss"} if method in TEACHER_METHODS else set())
    assert expected_keys <= set(history.history)
    for before, after in zip(teacher_before, weights_of(trained_teacher)):
        np.testing.assert_array_equal(before, after)
    assert any(not np.array_equal(b, a) for b, a in zip(student_before, weights_of(distiller.student)))
    # call / predict / evaluate use the student on clean images.
    np.testing.assert_allclose(distiller.predict(x_test[:8], verbose=0), distiller.student.predict(x_test[:8], verbose=0), atol=1e-6)


def test_ce_gives_the_same_update_as_plain_fit(fashion_arrays):
    (x, y), _ = fashion_arrays
    x, y = x[:64], y[:64]
    plain = make_student()
    distilled = make_student()
    distilled.set_weights(plain.get_weights())
    plain.compile(optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    distiller = Distiller(distilled, method="ce")
    distiller.compile(optimizer=keras.optimizers.SGD(0.1))
    distiller.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), distilled.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_stkd_teacher_sees_the_mixed_images_and_naive_the_clean_ones(fashion_arrays, trained_teacher):
    (x, y), _ = fashion_arrays
    images, labels = tf.constant(x[:16]), tf.one_hot(y[:16], 10)
    for method, teacher_sees_mixed in (("stkd", True), ("kd_mixup_naive", False)):
        distiller = Distiller(make_student(), trained_teacher, method=method, seed=3)
        student_images, targets, _ = distiller._training_batch(images, labels, None)
        assert not np.allclose(student_images, images)
        seen = student_images if teacher_sees_mixed else images
        np.testing.assert_allclose(targets["teacher_logits"], trained_teacher(seen, training=False), atol=1e-5)
        np.testing.assert_allclose(np.sum(targets["labels"], axis=-1), np.ones(16), rtol=1e-6)


def test_stkd_loss_value_of_one_step(fashion_arrays, trained_teacher):
    (x, y), _ = fashion_arrays
    images, labels = tf.constant(x[:32]), tf.one_hot(y[:32], 10)
    distiller = Distiller(make_student(), trained_teacher, method="stkd", temperature=2.0, ce_weight=0.3, kd_weight=0.7, seed=5)
    student_images, targets, _ = distiller._training_batch(images, labels, None)
    student_logits = distiller.student(student_images, training=False)
    value = distiller.compute_loss(student_images, targets, student_logits, training=False)
    expected = losses.stkd_loss(targets["labels"], targets["teacher_logits"], student_logits, 2.0, 0.3, 0.7)
    assert float(value) == pytest.approx(float(expected), rel=1e-6)


def test_clean_kd_term_is_added(fashion_arrays, trained_teacher):
    (x, y), _ = fashion_arrays
    distiller = distiller_for("stkd", trained_teacher, clean_kd_weight=0.5)
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    history = distiller.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    assert history.history["clean_kd_loss"][0] > 0


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
    assert {"epoch", "loss", "ce_loss", "kd_loss", "val_accuracy"} <= set(header)


def test_one_hot_labels_and_datasets_are_accepted(fashion_arrays, trained_teacher):
    (x, y), _ = fashion_arrays
    dataset = tf.data.Dataset.from_tensor_slices((x[:128], np.eye(10, dtype="float32")[y[:128]])).batch(32)
    distiller = distiller_for("kd", trained_teacher)
    distiller.compile(optimizer="sgd", metrics=["accuracy"])
    distiller.fit(dataset, epochs=1, verbose=0)
    results = distiller.evaluate(dataset, verbose=0, return_dict=True)
    assert 0 <= results["accuracy"] <= 1 and np.isfinite(results["kd_loss"])


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
    np.testing.assert_allclose(restored(x[:4], training=False), distiller.student(x[:4], training=False), atol=1e-6)


def test_config_round_trip(trained_teacher):
    distiller = Distiller(
        make_student(), trained_teacher, method="kd_mixup_naive", temperature=2.0, ce_weight=0.2, kd_weight=0.8,
        mixup_alpha=0.4, lambda_per_sample=True, clean_kd_weight=0.1, seed=9,
    )
    restored = Distiller.from_config(distiller.get_config())
    for name in ("method", "temperature", "ce_weight", "kd_weight", "mixup_alpha", "lambda_per_sample", "clean_kd_weight", "seed"):
        assert getattr(restored, name) == getattr(distiller, name)
    assert restored.student.name == distiller.student.name and restored.teacher.name == trained_teacher.name
    assert restored.student.count_params() == distiller.student.count_params()


def test_xla_step(fashion_arrays, trained_teacher):
    (x, y), _ = fashion_arrays
    distiller = distiller_for("stkd", trained_teacher, lambda_per_sample=True)
    distiller.compile(optimizer="sgd", metrics=["accuracy"], jit_compile=True)
    history = distiller.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    assert distiller.jit_compile is True
    assert np.isfinite(history.history["loss"][0]) and history.history["kd_loss"][0] > 0


def test_mixed_float16_step(fashion_arrays, trained_teacher):
    (x, y), _ = fashion_arrays
    keras.mixed_precision.set_global_policy("mixed_float16")
    student = make_student()
    assert student.get_layer("stage1_conv").compute_dtype == "float16"
    distiller = Distiller(student, trained_teacher, method="stkd", seed=0)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    assert isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer)
    before = weights_of(student)
    history = distiller.fit(x[:512], y[:512], batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and history.history["kd_loss"][0] > 0
    assert any(not np.array_equal(b, a) for b, a in zip(before, weights_of(student)))
    assert student(x[:2]).dtype == "float32"  # logits layer stays float32


def test_validation_errors(trained_teacher):
    student = make_student()
    with pytest.raises(ValueError, match="Received: method='hinton'"):
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
    with pytest.raises(ValueError, match="clean_kd_weight=0.5 with method='kd'"):
        Distiller(student, trained_teacher, method="kd", clean_kd_weight=0.5)
    with pytest.raises(ValueError, match=r"input shapes must match.*\(28, 28, 1\).*\(32, 32, 3\)"):
        Distiller(make_student(input_shape=(32, 32, 3)), trained_teacher, method="kd")
    with pytest.raises(ValueError, match=r"output shapes must match.*\(10,\).*\(5,\)"):
        Distiller(make_student(classes=5), trained_teacher, method="stkd")
    distiller = Distiller(student, trained_teacher, method="kd")
    with pytest.raises(ValueError, match="do not pass `loss`"):
        distiller.compile(optimizer="sgd", loss="mse")
