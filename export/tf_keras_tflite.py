"""A fine-tuned tf_keras model as a full-integer int8 TFLite file, and that file's accuracy in ai_edge_litert.

Part of the QAT/pruning bridge (`stkd_keras.export.tfmot_bridge`), which alone imports it, in its own process
(tf_keras, legacy Keras). The int8 settings and the runner are the export stage's own
(`stkd_keras.export.converters.int8_converter_options`, `stkd_keras.export.runtime.TFLiteRunner`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stkd_keras.export.plan import BridgeError


def int8_flatbuffer(model, representative: np.ndarray) -> bytes:
    """Full-integer int8 TFLite of a tf_keras model, with the export stage's int8 settings.

    Raises:
        BridgeError: When the converter fails, with the first line of its message.
    """
    import tensorflow as tf

    from stkd_keras.export.converters import apply_converter_options, int8_converter_options

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    apply_converter_options(converter, int8_converter_options(representative))
    try:
        return converter.convert()
    except Exception as error:  # The converter raises ConverterError and others, with long MLIR dumps.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BridgeError(f"The int8 TFLite conversion failed: {first_line}") from None


def evaluate_tflite(path: Path, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> dict:
    """Top-1 accuracy of a .tflite file in ai_edge_litert, through the export stage's own runner (`TFLiteRunner`)."""
    from stkd_keras.export.runtime import TFLiteRunner

    runner = TFLiteRunner(path)
    predictions = runner.predict(images, batch_size).argmax(axis=-1)
    scale, zero_point = runner.input_detail["quantization"]
    return {
        "predictions": predictions,
        "top1_accuracy": float(np.mean(predictions == labels)),
        "input_dtype": runner.input_dtype,
        "output_dtype": runner.output_dtype,
        "input_quantization": {"scale": float(scale), "zero_point": int(zero_point)},
    }
