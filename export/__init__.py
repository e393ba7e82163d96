"""Export stage (installed as `stkd_keras.export`): verified TFLite/LiteRT and ONNX students.

`export_model` converts a Keras student to TFLite (float32, float16,
dynamic-range, full-integer int8) and ONNX (float32, int8), runs every file
back in its runtime on real evaluation images, compares it with Keras, embeds
the preprocessing the runtime needs (input shape, mean/std, class names) and
writes the files atomically with an `export_report.json`. Quantization-aware
training and pruning run through `stkd_keras.export.tfmot_bridge` in a
subprocess, because tensorflow-model-optimization needs legacy Keras.
"""

from stkd_keras.export.core import (
    DEFAULT_OPSET,
    FLOAT_BOUNDS,
    FORMATS,
    QUANTIZATIONS,
    ExportData,
    ExportError,
    convert_onnx,
    convert_tflite,
    export_model,
    load_export_data,
)
from stkd_keras.export.runtime import ONNXRunner, TFLiteRunner, read_metadata, runner_for

__all__ = [
    "DEFAULT_OPSET",
    "FLOAT_BOUNDS",
    "FORMATS",
    "QUANTIZATIONS",
    "ExportData",
    "ExportError",
    "ONNXRunner",
    "TFLiteRunner",
    "convert_onnx",
    "convert_tflite",
    "export_model",
    "load_export_data",
    "read_metadata",
    "runner_for",
]
