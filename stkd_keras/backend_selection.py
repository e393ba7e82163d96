"""Choosing the Keras backend of a run, before Keras is imported.

Keras reads `KERAS_BACKEND` once, when it is first imported, and keeps that
backend for the life of the process. A command that trains on a chosen
backend therefore sets the variable before anything imports Keras; a process
that already runs Keras on another backend (a test, a notebook calling the
CLI) starts the command in a child process instead (`stkd_keras.cli`).

Nothing here imports Keras, TensorFlow, JAX or PyTorch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

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
    """Whether `import tensorflow` works here (False where it is not installed, or blocked), whatever the Keras backend."""
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


# Lines TensorFlow and LiteRT write from C++, where TF_CPP_MIN_LOG_LEVEL does not reach: the start-up
# lines come before absl logging is initialised (each library TensorFlow loads repeats them), the
# others are the converter's and the interpreter's own prints.
_NATIVE_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^[IW]\d{4} .*"),  # INFO and WARNING lines in absl's format (E and F lines are kept)
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
    re.compile(r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+$"),
)
_NO_GPU_NOISE = re.compile(r"^E\d{4} .*failed call to cuInit")


def _is_native_noise(line: str, gpu_driver: bool) -> bool:
    if any(pattern.match(line) for pattern in _NATIVE_NOISE):
        return True
    # Without an NVIDIA driver, TensorFlow's failed CUDA probe is expected; with one, it is a real error.
    return not gpu_driver and bool(_NO_GPU_NOISE.match(line))


@contextlib.contextmanager
def filtered_stderr():
    """Catches standard error at the file-descriptor level while the block runs, then writes back all but known noise.

    The noise is what TensorFlow and LiteRT print from C++ on every run: about
    seven start-up INFO lines (oneDNN, CUDA stubs, CPU features) twice, an
    `E0000 ... failed call to cuInit` on machines without a GPU, the int8
    converter's settings and the XNNPACK delegate's line. Everything else
    (errors, Python warnings) is written back when the block ends, even when
    it raises.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            gpu_driver = os.path.exists("/proc/driver/nvidia")
            kept = [
                line
                for line in caught.read().decode(errors="replace").splitlines()
                if not _is_native_noise(line, gpu_driver)
            ]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
                sys.stderr.flush()


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow and lists its devices inside `filtered_stderr()`, so its start-up lines are not shown.

    Does nothing when TensorFlow is already imported or not installed.
    """
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    with filtered_stderr():
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
            # Each model a run evaluates (teacher, student, the zeros batch that builds it) traces its own
            # step function; TensorFlow's "N out of the last M calls ... triggered tf.function retracing"
            # then reads like a defect though it is expected. Only that message is dropped.
            tf.get_logger().addFilter(lambda record: "triggered tf.function retracing" not in record.getMessage())
        except ImportError:
            pass  # a blocked or broken TensorFlow: `tensorflow_available()` says so where it matters
