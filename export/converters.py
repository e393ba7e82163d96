"""The converters of the export stage: the model's inference function traced once, then written as TFLite and ONNX.

An export traces the Keras model once into a SavedModel (`write_saved_model`,
Keras's `ExportArchive`, the graph Keras's own LiteRT export converts) and
converts every file from that one graph: each TFLite mode with
`tf.lite.TFLiteConverter.from_saved_model`, and ONNX through tf2onnx's
SavedModel loader (the graph its command line converts with `--saved-model`).
Tracing once saves a trace and a SavedModel per further TFLite mode (about a
third of a four-mode export), and the SavedModel loader freezes every constant
the model captures: tf2onnx's `from_function`, which Keras's ONNX export calls,
turns a captured constant into a graph input instead (a `keras.layers.Normalization`
layer, EfficientNet's first layers, then gives a file onnxruntime cannot run).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from stkd_keras.export.plan import DEFAULT_OPSET, ExportError, OnnxInt8Config

ENDPOINT = "serve"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def input_signature(model, dynamic_batch: bool) -> list:
    """The traced function's one input: `images`, (1 or None, height, width, channels) float32."""
    height, width, channels = model.input_shape[1:]
    return [tf.TensorSpec((None if dynamic_batch else 1, height, width, channels), tf.float32, name=INPUT_NAME)]


def write_saved_model(model, folder: Path, dynamic_batch: bool = False) -> Path:
    """Writes the model's inference call (`training=False`) as a SavedModel with one signature; returns `folder`.

    Raises:
        ExportError: If the model cannot be traced.
    """
    from keras import export as keras_export

    archive = keras_export.ExportArchive()
    archive.track(model)
    try:
        archive.add_endpoint(
            ENDPOINT,
            functools.partial(model.__call__, training=False),
            input_signature=input_signature(model, dynamic_batch),
        )
        archive.write_out(str(folder), verbose=False)
    except Exception as error:
        raise ExportError(f"{model.name} cannot be traced for export: {type(error).__name__}: {error}") from None
    return folder


@contextlib.contextmanager
def _saved_model(model, saved_model: Path | None, dynamic_batch: bool) -> Iterator[Path]:
    """`saved_model` when the caller wrote it, else one written into a temporary folder for the block."""
    if saved_model is not None:
        yield saved_model
        return
    with tempfile.TemporaryDirectory() as folder:
        yield write_saved_model(model, Path(folder) / "saved_model", dynamic_batch)


@contextlib.contextmanager
def _tensorflow_log_level(level: int) -> Iterator[None]:
    """TensorFlow's Python logger at `level` while the block runs."""
    logger = tf.get_logger()
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def apply_converter_options(converter, options: dict) -> None:
    """Sets `options` on a TFLite converter: attributes by name, `target_spec` as a dict of its attributes."""
    for name, value in options.items():
        if name == "target_spec":
            for attribute, setting in value.items():
                setattr(converter.target_spec, attribute, setting)
        else:
            setattr(converter, name, value)


def int8_converter_options(representative: np.ndarray) -> dict:
    """The TFLite converter's settings for full-integer int8 (int8 ops, input and output).

    Calibrated one image at a time on `representative`.

    One definition for the export and for the QAT/pruning bridge (set on
    tf_keras's converter by `apply_converter_options`).
    """

    def representative_dataset():
        for index in range(len(representative)):
            yield [representative[index : index + 1].astype(np.float32)]

    return {
        "optimizations": [tf.lite.Optimize.DEFAULT],
        "target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]},
        "representative_dataset": representative_dataset,
        "inference_input_type": tf.int8,
        "inference_output_type": tf.int8,
    }


def tflite_converter_options(quantize: str, representative: np.ndarray | None = None) -> dict:
    """The TFLite converter's settings for one mode, builtin ops only.

    Raises:
        ExportError: For int8 without representative images.
    """
    builtins = {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}
    optimized = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        return {"optimizations": optimized, "target_spec": {**builtins, "supported_types": [tf.float16]}}
    if quantize == "dynamic":
        return {"optimizations": optimized, "target_spec": builtins}
    if quantize == "int8":
        if representative is None or not len(representative):
            raise ExportError("Full-integer int8 export needs representative training images; pass --dataset.")
        return int8_converter_options(representative)
    return {"target_spec": builtins}


def convert_tflite(
    model,
    path: Path,
    quantize: str,
    representative: np.ndarray | None = None,
    dynamic_batch: bool = False,
    saved_model: Path | None = None,
) -> None:
    """Writes the model as a TFLite flatbuffer with builtin ops only, converted from its SavedModel.

    `saved_model` is `write_saved_model`'s folder for this model and batch
    dimension, shared by an export's files; without it one is written for this call.

    Raises:
        ExportError: If the model needs ops outside the TFLite builtins (the
            message names them), or int8 is asked for without representative images.
    """
    options = tflite_converter_options(quantize, representative)
    with _saved_model(model, saved_model, dynamic_batch) as folder:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
        # As Keras's LiteRT export sets it: variables the graph still reads become constants or resources.
        converter.experimental_enable_resource_variables = True
        apply_converter_options(converter, options)
        try:
            path.write_bytes(converter.convert())
        except Exception as error:  # ConverterError and friends carry the op names in their message.
            message = str(error)
            ops = sorted(
                set(re.findall(r"\btf\.([A-Za-z0-9_]+)", message)) | set(re.findall(r"'([A-Z][A-Za-z0-9]+)'", message))
            )
            named = f" (ops: {', '.join(ops[:10])})" if ops else ""
            raise ExportError(
                f"{model.name} cannot be converted to TFLite with builtin ops only{named}; an edge runtime without "
                "Flex ops could not run it."
            ) from None


def convert_onnx(
    model, path: Path, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False, saved_model: Path | None = None
) -> None:
    """Writes the model as ONNX, converted by tf2onnx from its SavedModel, checked by onnx; one input, `images`.

    The output is named `logits`. `saved_model` as for `convert_tflite`.

    Raises:
        ExportError: If tf2onnx fails, or its file has inputs other than the images.
    """
    import onnx
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    # tf2onnx's loader freezes the graph with TensorFlow 1 functions, which log a deprecation warning each.
    with _saved_model(model, saved_model, dynamic_batch) as folder, _tensorflow_log_level(logging.ERROR):
        try:
            graph_def, inputs, outputs, names = tf_loader.from_saved_model(
                str(folder), None, None, tag=["serve"], signatures=[ENDPOINT], return_tensors_to_rename=True
            )
            names = {**names, **dict.fromkeys(outputs, OUTPUT_NAME)}
            tf2onnx_convert.from_graph_def(
                graph_def,
                name=model.name,
                input_names=inputs,
                output_names=outputs,
                opset=opset,
                tensors_to_rename=names,
                output_path=str(path),
            )
        except Exception as error:
            raise ExportError(
                f"{model.name} cannot be converted to ONNX opset {opset}: {type(error).__name__}: {error}"
            ) from None
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    found = [graph_input.name for graph_input in proto.graph.input]
    if found != [INPUT_NAME]:
        # A constant left as a graph input (tf2onnx's `from_function` does that) would make the file unrunnable.
        raise ExportError(f"The ONNX file of {model.name} takes inputs {found}, not the images alone.")


def quantize_onnx_int8(
    float_path: Path, output_path: Path, representative: np.ndarray, config: OnnxInt8Config = OnnxInt8Config()
) -> None:
    """Static int8 quantization, calibrated on training images (`config`: its format, types and granularity)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, input_name):
            self.batches = iter(
                [{input_name: representative[i : i + 1].astype(np.float32)} for i in range(len(representative))]
            )

        def get_next(self):
            return next(self.batches, None)

    input_name = onnx.load(str(float_path)).graph.input[0].name
    prepared = output_path.with_name(output_path.stem + ".pre.onnx")
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(output_path),
        Reader(input_name),
        quant_format=getattr(QuantFormat, config.quant_format),
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=QuantType.QInt8 if config.activations == "int8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    prepared.unlink()
