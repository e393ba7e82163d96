"""The few pieces of the library that differ between Keras backends, in one place.

Everything else in `stkd_keras` (the Distiller, the methods, losses, mixup,
models) is written in `keras.ops` and runs on TensorFlow, JAX and PyTorch
alike. What is left:

- Sampling Beta(a, a) inside a compiled step. On JAX and PyTorch,
  `keras.random.beta` with a `keras.random.SeedGenerator` works inside the
  backend's compiled step. On TensorFlow it does not compile under XLA (its
  gamma sampler, `StatelessRandomGammaV3`, has no XLA kernel), so there the
  Beta draw inverts the CDF: u ~ Uniform(0, 1), lambda = I_u^{-1}(a, a), with
  I the regularised incomplete beta function (`tf.math.betainc`, which XLA
  compiles) and the inverse found by bisection; exact up to float32 rounding.
  On PyTorch, `keras.random.beta` divides two Gamma(a) draws that both
  underflow to 0 for a <= 1e-3 and returns 0.5 there, where the true draws
  (and TensorFlow's and JAX's) sit at 0 or 1; so it draws in log space:
  Beta(a, a) = sigmoid(log X - log Y) for X, Y ~ Gamma(a), with
  log Gamma(a) = log Gamma(a + 1) + log(U) / a (Marsaglia and Tsang's boost).
- The loss under a `tf.distribute` strategy: TensorFlow sums the gradients of
  the replicas, so a loss that is a mean over one replica's batch is divided
  by the number of replicas (as Keras's own `Loss` objects do). JAX's
  `keras.distribution` computes the loss on the global batch, and PyTorch runs
  one replica: there it is left as it is.

TensorFlow is imported only on the TensorFlow backend: a machine with Keras
and JAX or PyTorch alone runs the library without it.
"""

from __future__ import annotations

import contextlib

import keras

# 2^-40 is far below float32 resolution around 0.5, so more bisection steps change nothing.
_BISECTION_STEPS = 40


def name() -> str:
    """The Keras backend in use: "tensorflow", "jax", "torch" (or "numpy", which cannot train)."""
    return keras.backend.backend()


def sample_beta(shape, alpha: float, seed=None):
    """Float32 draws from the symmetric Beta(alpha, alpha) that compile in the backend's step (see the module doc)."""
    if name() == "tensorflow":
        return _tensorflow_sample_beta(shape, alpha, seed)
    if name() == "torch":
        import torch

        # Keras's torch samplers seed torch from the SeedGenerator's state with int(...), which torch.compile
        # guards on: compiled, every step would recompile. Run eagerly, the draw is one graph break.
        return torch.compiler.disable(_log_space_beta)(shape, alpha, seed)
    return keras.random.beta(shape, alpha, alpha, dtype="float32", seed=seed)


def _log_space_beta(shape, alpha: float, seed):
    """Beta(alpha, alpha) as sigmoid(log X - log Y), X, Y ~ Gamma(alpha) drawn in log space (no underflow)."""

    def log_gamma_draw():
        boosted = keras.random.gamma(shape, alpha + 1.0, dtype="float32", seed=seed)
        # The smallest normal float32 keeps log(u) finite: u = 0 would give -inf on both sides, and nan.
        uniform = keras.random.uniform(shape, minval=1.1754944e-38, maxval=1.0, dtype="float32", seed=seed)
        return keras.ops.log(boosted) + keras.ops.log(uniform) / alpha

    return keras.ops.sigmoid(log_gamma_draw() - log_gamma_draw())


def _tensorflow_sample_beta(shape, alpha: float, seed):
    import tensorflow as tf

    u = keras.random.uniform(shape, dtype="float32", seed=seed)
    a = tf.constant(alpha, dtype=tf.float32)
    lo = tf.zeros_like(u)
    hi = tf.ones_like(u)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        below = tf.math.betainc(a, a, mid) < u
        lo = tf.where(below, mid, lo)
        hi = tf.where(below, hi, mid)
    return 0.5 * (lo + hi)


def scale_loss_for_distribution(loss):
    """Divides a per-replica mean loss by the number of `tf.distribute` replicas in sync; other backends: unchanged."""
    if name() != "tensorflow":
        return loss
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


@contextlib.contextmanager
def determinism():
    """Bit-identical reruns on CPU in the block: TensorFlow's op determinism, PyTorch's deterministic algorithms.

    The process's earlier setting comes back afterwards: left on, TensorFlow's
    op determinism would silently turn off XLA (`jit_compile=True`) for every
    model the process compiles later. TensorFlow exposes only the switch-on
    (`tf.config.experimental.enable_op_determinism`); its query and switch-off
    live in `tensorflow.python.framework.config`, which Keras's trainer reads
    too. JAX on CPU is deterministic as it is (on GPUs, XLA needs
    `XLA_FLAGS=--xla_gpu_deterministic_ops=true` before JAX starts).
    """
    restore = None
    if name() == "tensorflow":
        import tensorflow as tf
        from tensorflow.python.framework import config as tf_config

        if not tf_config.is_op_determinism_enabled():
            restore = tf_config.disable_op_determinism
        tf.config.experimental.enable_op_determinism()
    elif name() == "torch":
        import torch

        was_on = torch.are_deterministic_algorithms_enabled()
        restore = lambda: torch.use_deterministic_algorithms(was_on)  # noqa: E731
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        if restore is not None:
            restore()


def describe() -> dict:
    """The backend, its package's version and the accelerators it sees (for metrics.json)."""
    backend = name()
    if backend == "tensorflow":
        import tensorflow as tf

        return {
            "backend": backend,
            "tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        }
    if backend == "jax":
        import jax

        return {
            "backend": backend,
            "jax": jax.__version__,
            "gpus": [str(d) for d in jax.devices() if d.platform != "cpu"],
        }
    if backend == "torch":
        import torch

        gpus = (
            [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_available()
            else []
        )
        return {"backend": backend, "torch": torch.__version__, "gpus": gpus}
    return {"backend": backend}
