"""Export stage (installed as `stkd_keras.export`): verified TFLite/LiteRT and ONNX students.

`export_run` exports a finished run's student as `stkd-keras export` does
(`ExportOptions` holds that command's options; `prepare_export` checks them
without TensorFlow). `export_model` converts a Keras student to TFLite (float32, float16,
dynamic-range, full-integer int8) and ONNX (float32, int8), several modes in one call, runs every file
back in its runtime on real evaluation images, compares it with Keras, embeds
the preprocessing the runtime needs (input shape, mean/std, class names) and
writes the files atomically with an `export_report.json`. Quantization-aware
training and pruning run through `stkd_keras.export.tfmot_bridge` in a
subprocess, because tensorflow-model-optimization needs legacy Keras.

The names below are imported on first use: `stkd_keras.export.plan` (what an
export will write) answers without TensorFlow, so the CLI checks options at once.
"""

from stkd_keras.lazy import lazy_attributes

_PLAN = (
    "DEFAULT_OPSET",
    "DEFAULT_QUANTIZATIONS",
    "FLOAT_BOUNDS",
    "FORMAT_QUANTIZATIONS",
    "FORMATS",
    "QUANTIZATIONS",
    "ExportError",
    "OnnxInt8Config",
    "export_plan",
    "float_bound",
    "parse_quantizations",
)
_CORE = ("ExportData", "export_model", "load_export_data")
_CONVERTERS = ("convert_onnx", "convert_tflite", "write_saved_model")
_RUN = ("ExportOptionError", "ExportOptions", "export_run", "prepare_export")
_RUNTIME = ("ONNXRunner", "TFLiteRunner", "measure_latency", "median_ms", "read_metadata", "runner_for")
_EXPORTS = {
    **{name: "stkd_keras.export.plan" for name in _PLAN},
    **{name: "stkd_keras.export.core" for name in _CORE},
    **{name: "stkd_keras.export.converters" for name in _CONVERTERS},
    **{name: "stkd_keras.export.runtime" for name in _RUNTIME},
    **{name: "stkd_keras.export.run" for name in _RUN},
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
