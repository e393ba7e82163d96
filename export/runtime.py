"""Run exported students in their edge runtimes: the LiteRT interpreter and onnxruntime.

Both runners take normalised float32 images (batch, H, W, C) and return float32
logits, quantising int8 inputs and dequantising int8 outputs with the tensor's
own scale and zero point, so a quantized file is measured exactly as a phone
would feed it. A file whose batch dimension is fixed (to 1 by default for edge
delegates) is run one image at a time.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

METADATA_NAME = "stkd_keras_metadata"


@functools.lru_cache(maxsize=None)
def _limits(dtype) -> tuple:
    info = np.iinfo(dtype)
    return np.float32(info.min), np.float32(info.max)


def _quantize(images: np.ndarray, detail: dict) -> np.ndarray:
    """round(x / scale + zero_point) clipped to the integer type: the runtime's own arithmetic, float32, in place."""
    if detail["dtype"] == np.float32:
        return np.asarray(images, dtype=np.float32)
    scale, zero_point = detail["quantization"]
    low, high = _limits(detail["dtype"])
    values = np.divide(images, np.float32(scale), dtype=np.float32)
    values += np.float32(zero_point)
    np.rint(values, out=values)
    np.maximum(values, low, out=values)  # two ufuncs in place: np.clip's wrapper costs more than the arithmetic here
    np.minimum(values, high, out=values)
    return values.astype(detail["dtype"])


def _dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    """(q - zero_point) * scale in float32."""
    if detail["dtype"] == np.float32:
        return values
    scale, zero_point = detail["quantization"]
    logits = values.astype(np.float32)
    logits -= np.float32(zero_point)
    logits *= np.float32(scale)
    return logits


def median_ms(call, repeats: int = 200, warmup: int = 20) -> float:
    """Median wall time of `call()` in milliseconds over `repeats` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    return 1e3 * statistics.median(_times(call, repeats))


def measure_latency(runner, image: np.ndarray, repeats: int = 200, warmup: int = 20, rounds: int = 5) -> dict:
    """Single-input latency of an exported file, the runtime's own call apart from the runner around it.

    `runtime_ms` times only the runtime's call on an input already in place
    (LiteRT's `Interpreter.invoke`, onnxruntime's `InferenceSession.run`);
    `end_to_end_ms` times `runner.predict(image)`: the same call plus putting
    the normalised float32 image in (quantising it for an int8 input) and
    reading the logits out (dequantising them). Both are medians in ms over
    `repeats` calls, taken in `rounds` alternating blocks so that a slow spell
    of the machine weighs on both alike.
    """
    block = max(1, repeats // rounds)
    runtime, end_to_end = [], []
    for _ in range(warmup):
        runner.predict(image)
    for _ in range(rounds):
        call = runner.invoke_call(image)
        runtime += _times(call, block)
        end_to_end += _times(lambda: runner.predict(image), block)
    return {"runtime_ms": 1e3 * statistics.median(runtime), "end_to_end_ms": 1e3 * statistics.median(end_to_end)}


def _times(call, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return times


class _Runner:
    """What both runners share: `predict` in batches of `batch_size`, or one at a time for a file with a fixed batch."""

    fixed_batch: int | None = None  # each runner sets it, and defines `_run`, its runtime's call on one batch

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        step = self.fixed_batch or batch_size
        if len(images) <= step:
            return self._run(images)
        return np.concatenate([self._run(images[i : i + step]) for i in range(0, len(images), step)])


class TFLiteRunner(_Runner):
    """A `.tflite` file in the LiteRT interpreter (`ai_edge_litert`)."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        self.path = str(path)
        self.interpreter = Interpreter(model_path=self.path, num_threads=num_threads)
        self.input_detail = self.interpreter.get_input_details()[0]
        self.output_detail = self.interpreter.get_output_details()[0]
        self.fixed_batch = (
            int(self.input_detail["shape_signature"][0]) if self.input_detail["shape_signature"][0] > 0 else None
        )
        self._batch = None

    @property
    def input_dtype(self) -> str:
        return np.dtype(self.input_detail["dtype"]).name

    @property
    def output_dtype(self) -> str:
        return np.dtype(self.output_detail["dtype"]).name

    def _set_input(self, images: np.ndarray) -> None:
        if self._batch != len(images):
            self.interpreter.resize_tensor_input(self.input_detail["index"], (len(images), *images.shape[1:]))
            self.interpreter.allocate_tensors()
            self.input_detail = self.interpreter.get_input_details()[0]
            self.output_detail = self.interpreter.get_output_details()[0]
            self._batch = len(images)
        self.interpreter.set_tensor(self.input_detail["index"], _quantize(images, self.input_detail))

    def _run(self, images: np.ndarray) -> np.ndarray:
        self._set_input(images)
        self.interpreter.invoke()
        return _dequantize(self.interpreter.get_tensor(self.output_detail["index"]), self.output_detail)

    def invoke_call(self, images: np.ndarray):
        """Puts `images` in the input tensor; returns the interpreter's own `invoke`, to time the runtime alone."""
        self._set_input(images)
        return self.interpreter.invoke


class ONNXRunner(_Runner):
    """An `.onnx` file in onnxruntime (CPU)."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        self.path = str(path)
        self.session = onnxruntime.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        batch = self.input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None

    input_dtype = "float32"
    output_dtype = "float32"

    def _run(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input.name: np.asarray(images, dtype=np.float32)})[0]

    def invoke_call(self, images: np.ndarray):
        """Returns a call of the session's own `run` on `images` (already float32), for timing the runtime alone."""
        return functools.partial(
            self.session.run, None, {self.input.name: np.ascontiguousarray(images, dtype=np.float32)}
        )


def runner_for(path: str | os.PathLike, num_threads: int = 1):
    """A `TFLiteRunner` or `ONNXRunner` by file suffix; `ValueError` for anything else."""
    suffix = Path(path).suffix
    if suffix == ".tflite":
        return TFLiteRunner(path, num_threads)
    if suffix == ".onnx":
        return ONNXRunner(path, num_threads)
    raise ValueError(f"Expected a .tflite or .onnx file. Received: {path}")


def embed_tflite_metadata(model_bytes: bytes, payload: dict, name: str = METADATA_NAME) -> bytes:
    """Returns the TFLite flatbuffer with `payload` (JSON) added as a named model metadata entry.

    Uses the TFLite schema shipped with LiteRT (`ai_edge_litert.schema_py_generated`):
    a buffer holding the JSON and a `Metadata{name, buffer}` entry, the mechanism
    the TFLite metadata tooling uses. Runtimes ignore entries they do not know.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(payload, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode() and m.name != name] + [entry]
    builder = flatbuffers.Builder(len(model_bytes) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def read_tflite_metadata(path: str | os.PathLike, name: str = METADATA_NAME) -> dict | None:
    """The JSON metadata entry `name` of a `.tflite` file, or None."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(bytearray(Path(path).read_bytes()), 0)
    for index in range(model.MetadataLength()):
        entry = model.Metadata(index)
        if entry.Name().decode() == name:
            return json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def read_onnx_metadata(path: str | os.PathLike, name: str = METADATA_NAME) -> dict | None:
    """The JSON metadata property `name` of an `.onnx` file, or None."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == name:
            return json.loads(prop.value)
    return None


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The metadata embedded in an exported file (TFLite metadata entry or ONNX metadata_props)."""
    return read_tflite_metadata(path) if Path(path).suffix == ".tflite" else read_onnx_metadata(path)


def embed_metadata(path: Path, metadata: dict) -> None:
    """Writes `metadata` into an exported file (TFLite metadata entry, ONNX metadata_props), for `read_metadata`."""
    if path.suffix == ".tflite":
        path.write_bytes(embed_tflite_metadata(path.read_bytes(), metadata))
        return
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = METADATA_NAME
    entry.value = json.dumps(metadata, sort_keys=True)
    onnx.save(proto, str(path))


def quantization_parameters(path: Path) -> dict | None:
    """The input and output dtype, scale and zero point of a TFLite file (None for ONNX)."""
    if path.suffix != ".tflite":
        return None
    runner = runner_for(path)
    scale_in, zero_in = runner.input_detail["quantization"]
    scale_out, zero_out = runner.output_detail["quantization"]
    return {
        "input": {"dtype": runner.input_dtype, "scale": float(scale_in), "zero_point": int(zero_in)},
        "output": {"dtype": runner.output_dtype, "scale": float(scale_out), "zero_point": int(zero_out)},
    }
