"""Standard error without the lines TensorFlow and LiteRT print from C++ on every run.

Those lines (start-up INFO lines, a failed CUDA probe on machines without a
GPU, the int8 converter's settings) come from native code, below Python's
logging and out of reach of `TF_CPP_MIN_LOG_LEVEL`; so they are caught at the
file-descriptor level and dropped, and everything else is written back.

Nothing here imports TensorFlow, except `import_tensorflow_quietly`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

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
            pass  # a blocked or broken TensorFlow: `backend_selection.tensorflow_available()` says so where it matters
