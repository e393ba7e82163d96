"""Mixup draws and mixing on the tests' Keras backend (tests/test_backends.py runs this file on JAX and PyTorch too)."""

import keras
import numpy as np
import pytest

from stkd_keras import mixup as mixup_lib

BACKEND = keras.backend.backend()


def to_numpy(tensor):
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def batch(size=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(size, 8, 8, 3)).astype("float32")
    labels = np.eye(classes, dtype="float32")[rng.integers(0, classes, size)]
    return images, labels


def test_mixed_batch_is_the_convex_combination():
    images, labels = batch()
    out = mixup_lib.apply_mixup(images, labels, alpha=0.4, seed=3)
    lam = float(to_numpy(out.lam))
    perm = to_numpy(out.permutation)
    assert sorted(perm.tolist()) == list(range(16))
    np.testing.assert_allclose(to_numpy(out.images), lam * images + (1 - lam) * images[perm], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(to_numpy(out.labels), lam * labels + (1 - lam) * labels[perm], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.sum(to_numpy(out.labels), axis=-1), np.ones(16), rtol=1e-6)
    assert out.images.shape == images.shape and out.labels.shape == labels.shape


def test_per_sample_lambda():
    images, labels = batch()
    out = mixup_lib.apply_mixup(images, labels, alpha=1.0, per_sample=True, seed=5)
    lam = to_numpy(out.lam)
    perm = to_numpy(out.permutation)
    assert lam.shape == (16,)
    assert len(np.unique(lam)) == 16
    np.testing.assert_allclose(
        to_numpy(out.images),
        lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * images[perm],
        atol=1e-6,
    )
    np.testing.assert_allclose(np.sum(to_numpy(out.labels), axis=-1), np.ones(16), rtol=1e-6)
    assert mixup_lib.apply_mixup(images, labels, seed=5).lam.shape == ()


@pytest.mark.parametrize("per_sample", [False, True])
def test_mix_only_first_keeps_lambda_for_the_first_samples_and_one_for_the_rest(per_sample):
    lam = np.array([0.1, 0.2, 0.3, 0.4, 0.5], "float32") if per_sample else np.float32(0.3)
    # round(f * 5), half to even: 0.2 -> 1, 0.5 -> 2 (2.5), 0.9 -> 4 (4.5), 1.0 -> 5.
    for fraction, count in ((0.2, 1), (0.5, 2), (0.9, 4), (1.0, 5)):
        out = to_numpy(mixup_lib.mix_only_first(lam, 5, fraction))
        np.testing.assert_array_equal(out, np.where(np.arange(5) < count, lam, 1.0).astype("float32"))
    images, labels = batch(size=5)
    permutation = np.array([4, 3, 2, 1, 0], "int32")
    lam = mixup_lib.mix_only_first(lam, 5, 0.5)
    # lambda = 1 leaves a sample, and its label, exactly as it was.
    np.testing.assert_array_equal(to_numpy(mixup_lib.mix(images, lam, permutation))[2:], images[2:])
    np.testing.assert_array_equal(to_numpy(mixup_lib.mix(labels, lam, permutation))[2:], labels[2:])


def test_sample_weights_are_mixed():
    images, labels = batch()
    weights = np.arange(16, dtype="float32")
    out = mixup_lib.apply_mixup(images, labels, seed=1, sample_weight=weights)
    lam, perm = float(to_numpy(out.lam)), to_numpy(out.permutation)
    np.testing.assert_allclose(to_numpy(out.sample_weight), lam * weights + (1 - lam) * weights[perm], rtol=1e-6)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_lambda_follows_beta(alpha):
    draws = to_numpy(mixup_lib.sample_beta((100_000,), alpha, seed=keras.random.SeedGenerator(7)))
    assert draws.min() >= 0 and draws.max() <= 1
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
    assert draws.mean() == pytest.approx(0.5, abs=0.005)
    assert draws.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.03)
    # Quantiles agree with NumPy's independent Beta sampler.
    reference = np.random.default_rng(0).beta(alpha, alpha, 100_000)
    quantiles = [0.05, 0.25, 0.5, 0.75, 0.95]
    np.testing.assert_allclose(np.quantile(draws, quantiles), np.quantile(reference, quantiles), atol=0.01)


@pytest.mark.parametrize("alpha", [1e-4, 1e-3, 2e-3])
def test_a_tiny_alpha_gives_the_same_lambdas_on_every_backend(alpha):
    """Beta(a, a) for a tiny a puts its mass at 0 and 1. PyTorch's sampler returned 0.5 there (both gammas underflowed),
    where TensorFlow and JAX give 0 or 1: one run meant pure images on two backends and half-half mixes on the third."""
    draws = to_numpy(mixup_lib.sample_beta((20_000,), alpha, seed=keras.random.SeedGenerator(3)))
    # P(0.01 < lambda < 0.99) for Beta(a, a) is about 2 a ln(99) (the density is ~a / lambda near 0): 0.09% at a = 1e-4,
    # 1.8% at 2e-3. Seen before the fix on PyTorch: 88%, 25% and 7%, nearly all of it at 0.5.
    inside = np.mean((draws > 0.01) & (draws < 0.99))
    assert inside <= 3 * 2 * alpha * np.log(99) + 0.002
    assert np.mean(np.abs(draws - 0.5) < 0.01) < 0.001
    assert np.mean(draws < 0.5) == pytest.approx(0.5, abs=0.02)


def test_per_batch_lambda_statistics_over_many_batches():
    images, labels = batch(size=4)
    generator = keras.random.SeedGenerator(11)
    lams = np.array(
        [float(to_numpy(mixup_lib.apply_mixup(images, labels, alpha=0.2, seed=generator).lam)) for _ in range(300)]
    )
    # Beta(0.2, 0.2): mean 1/2, variance 1 / (4 * 1.4) = 0.179. Over 300 draws the mean's standard error is
    # sqrt(0.179 / 300) = 0.024, and the variance's relative one sqrt((kurtosis - 1) / 300) = 0.028 (kurtosis
    # 3 - 6 / (2a + 3) = 1.24): both tolerances are over 3 standard errors. 1000 draws took 20 s on TensorFlow.
    assert lams.mean() == pytest.approx(0.5, abs=0.08)
    assert lams.var() == pytest.approx(1 / (4 * 1.4), rel=0.1)
    print(f"300 per-batch draws: mean {lams.mean():.4f}, variance {lams.var():.4f}")


def test_reproducible_with_seed():
    images, labels = batch()
    first = mixup_lib.apply_mixup(images, labels, seed=42)
    second = mixup_lib.apply_mixup(images, labels, seed=42)
    other = mixup_lib.apply_mixup(images, labels, seed=43)
    np.testing.assert_array_equal(to_numpy(first.images), to_numpy(second.images))
    np.testing.assert_array_equal(to_numpy(first.permutation), to_numpy(second.permutation))
    assert float(to_numpy(first.lam)) != float(to_numpy(other.lam))


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="TensorFlow's own XLA-safe Beta sampler; the compiled draw of every backend: "
    "test_distiller.py::test_jit_compiled_step",
)
def test_runs_under_xla():
    import tensorflow as tf

    images, labels = batch()
    generator = keras.random.SeedGenerator(0)

    @tf.function(jit_compile=True)
    def step(x, y):
        out = mixup_lib.apply_mixup(x, y, alpha=0.2, per_sample=True, seed=generator)
        return out.images, out.labels, out.lam

    mixed_a, labels_a, lam_a = step(images, labels)
    mixed_b, _, lam_b = step(images, labels)
    np.testing.assert_allclose(np.sum(labels_a, axis=-1), np.ones(16), rtol=1e-6)
    assert np.all((np.asarray(lam_a) >= 0) & (np.asarray(lam_a) <= 1))
    # The generator advances: a second step draws new lambdas.
    assert not np.array_equal(lam_a, lam_b)


@pytest.mark.parametrize("alpha", [0, -0.2, float("inf"), "a"])
def test_invalid_alpha(alpha):
    images, labels = batch()
    with pytest.raises(ValueError, match="mixup_alpha"):
        mixup_lib.apply_mixup(images, labels, alpha=alpha)


def test_labels_must_be_one_hot():
    images, labels = batch()
    with pytest.raises(ValueError, match="one-hot"):
        mixup_lib.apply_mixup(images, np.argmax(labels, axis=-1))


def test_apply_mixup_is_deprecated_for_draw_and_mix():
    """One public mixup path: `draw` then `mix`, as the methods' step. apply_mixup gives the same batch meanwhile."""
    images, labels = np.arange(8, dtype="float32").reshape(4, 2), np.eye(4, dtype="float32")
    with pytest.warns(DeprecationWarning, match=r"apply_mixup is deprecated .*mixup.draw\(batch_size"):
        batch = mixup_lib.apply_mixup(images, labels, alpha=0.4, seed=3)
    lam, permutation = mixup_lib.draw(4, 0.4, False, keras.random.SeedGenerator(3))
    np.testing.assert_allclose(to_numpy(batch.images), to_numpy(mixup_lib.mix(images, lam, permutation)), rtol=1e-6)
