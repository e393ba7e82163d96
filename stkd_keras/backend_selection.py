"""Choosing the Keras backend of a run, before Keras is imported.

Keras reads `KERAS_BACKEND` once, when it is first imported, and keeps that
backend for the life of the process. A command that trains on a chosen
backend therefore sets the variable before anything imports Keras; a process
that already runs Keras on another backend (a test, a notebook calling the
CLI) starts the command in a child process instead (`stkd_keras.cli`).

Nothing here imports Keras, TensorFlow, JAX or PyTorch when the module is
imported; `tensorflow_available` tries TensorFlow when it is called.
"""

from __future__ import annotations

import importlib.util
import os
import sys

BACKENDS = ("tensorflow", "jax", "torch")
# What `pip install` needs for each backend, and the extra of this package that installs it.
_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}

# Which backends each distribution strategy runs on, and why the others cannot.
STRATEGY_BACKENDS = {
    "default": BACKENDS,
    "mirrored": ("tensorflow",),
    "multi_worker": ("tensorflow",),
    "data_parallel": ("jax",),
}
STRATEGIES = tuple(STRATEGY_BACKENDS)


def default_backend() -> str:
    """`KERAS_BACKEND` when it is set, else TensorFlow (Keras's own default)."""
    return os.environ.get("KERAS_BACKEND") or "tensorflow"


def loaded_backend() -> str | None:
    """The backend of the Keras already imported in this process, or None when Keras is not imported yet."""
    if "keras" not in sys.modules:
        return None
    import keras

    return keras.backend.backend()


def tensorflow_available() -> bool:
    """Whether `import tensorflow` works here, whatever the Keras backend (False where it is missing or blocked)."""
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def check_backend(name: str) -> None:
    """Raises `ValueError` (one sentence) for an unknown backend or one whose package is not installed."""
    if name not in BACKENDS:
        raise ValueError(f"Unknown backend {name!r}. Expected one of: {', '.join(BACKENDS)}.")
    package = _PACKAGES[name]
    if importlib.util.find_spec(package) is None:
        raise ValueError(
            f"The {name} backend needs the {package} package, which is not installed: pip install 'stkd-keras[{name}]'."
        )


def check_strategy(strategy: str, backend: str) -> None:
    """Raises `ValueError` (one sentence) for a distribution strategy the backend cannot run."""
    if strategy not in STRATEGY_BACKENDS:
        raise ValueError(f"Expected `strategy` in {STRATEGIES}. Received: strategy={strategy!r}")
    if backend in STRATEGY_BACKENDS[strategy]:
        return
    if strategy == "data_parallel":
        raise ValueError(
            f"--strategy data_parallel runs on the JAX backend (Keras 3.15's keras.distribution has no {backend} "
            "support); "
            "use --backend jax, or --strategy mirrored on TensorFlow."
        )
    raise ValueError(
        f"--strategy {strategy} is a TensorFlow strategy (tf.distribute) and cannot run on the {backend} backend; "
        "use --backend tensorflow, or --strategy data_parallel on JAX."
    )


def select(name: str) -> bool:
    """Makes `name` the backend Keras will load; False when this process already runs Keras on another backend.

    Raises:
        ValueError: For an unknown backend or one whose package is missing.
    """
    check_backend(name)
    loaded = loaded_backend()
    if loaded is None:
        os.environ["KERAS_BACKEND"] = name
        return True
    return loaded == name
