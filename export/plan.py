"""What an export will write, worked out without TensorFlow (so the CLI checks its options at once).

Formats, quantization modes, the onnxruntime int8 configuration, the (format, mode) plan of one export and the
names of its files.
"""

from __future__ import annotations

import dataclasses
import json


FORMATS = ("tflite", "onnx", "all")
QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
# The modes each format is written in; `none` is kept as a name for float32.
FORMAT_QUANTIZATIONS = {"tflite": ("float32", "float16", "dynamic", "int8"), "onnx": ("float32", "int8")}
DEFAULT_QUANTIZATIONS = ("float32", "int8")
# The most a float file's logits may differ from Keras's, as a fraction of the logits' scale (`float_bound`).
# float32 arithmetic alone moves them by a few 1e-6 of it: Keras against itself at batch 64 and batch 1 differs by
# 4.9e-4 on an EfficientNetB0 whose largest |logit| is 68, beyond a fixed 1e-4, and the trained keras.applications
# files of tests/test_export_applications.py differ by 0.6e-6 to 3.7e-6 of it. float16 weights round to 2^-11 of
# their value: 0.9e-3 to 9.1e-3 of the logits' scale in the same files (MobileNetV3Large the most).
FLOAT_BOUNDS = {"float32": 1e-4, "float16": 2e-2}
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """An export cannot be done or did not verify; the message is meant for the user as it is."""


class BridgeError(RuntimeError):
    """A model the QAT/pruning bridge cannot rebuild, quantize or prune, or a rebuild that does not match.

    Its message is one sentence for the user: the bridge process ends with it on stderr.
    """


def float_bound(quantization: str, max_abs_logit: float) -> float | None:
    """The bound on a float file's max |logit difference| from Keras: FLOAT_BOUNDS[mode] x max(1, max |Keras logit|).

    None for the quantized modes, whose cost is reported, not bounded.
    """
    fraction = FLOAT_BOUNDS.get(quantization)
    return None if fraction is None else fraction * max(1.0, float(max_abs_logit))


def _quantize_names(quantize) -> list[str]:
    items = [] if quantize is None else [quantize] if isinstance(quantize, str) else list(quantize)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def parse_quantizations(quantize) -> tuple[str, ...]:
    """The quantization modes asked for, in `QUANTIZATIONS` order, from names, comma-separated names or "all".

    Nothing asked for gives `DEFAULT_QUANTIZATIONS` (float32 and int8);
    `"none"` is float32; `"all"` is every mode, narrowed to what each format
    has by `export_plan`.

    Raises:
        ExportError: For a name that is not a mode.
    """
    names = _quantize_names(quantize)
    if not names:
        return DEFAULT_QUANTIZATIONS
    if "all" in names:
        return QUANTIZATIONS
    names = ["float32" if name == "none" else name for name in names]
    unknown = [name for name in names if name not in QUANTIZATIONS]
    if unknown:
        raise ExportError(
            f"Expected --quantize values among {', '.join(QUANTIZATIONS)}, none and all. Received: {unknown[0]!r}"
        )
    return tuple(mode for mode in QUANTIZATIONS if mode in names)


def export_plan(formats, quantize) -> list[tuple[str, str]]:
    """The (format, quantization) pairs of an export: each mode asked for, in every chosen format that has it.

    Raises:
        ExportError: For an unknown format or mode, or a mode that none of the
            formats has (float16 or dynamic with ONNX alone).
    """
    chosen = [name for name in FORMAT_QUANTIZATIONS if name in formats or "all" in formats]
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not chosen:
        raise ExportError(f"Expected formats among {', '.join(FORMATS)}. Received: {list(formats)!r}")
    modes = parse_quantizations(quantize)
    if "all" not in _quantize_names(quantize):
        for mode in modes:
            if not any(mode in FORMAT_QUANTIZATIONS[name] for name in chosen):
                supported = sorted({m for name in chosen for m in FORMAT_QUANTIZATIONS[name]}, key=QUANTIZATIONS.index)
                raise ExportError(
                    f"{' and '.join(chosen).upper()} export has no {mode} mode; --quantize takes "
                    f"{', '.join(supported)} here."
                )
    return [(name, mode) for name in chosen for mode in modes if mode in FORMAT_QUANTIZATIONS[name]]


def file_name(stem: str, export_format: str, quantization: str) -> str:
    """The name of one exported file: `student_int8.tflite`, `student_float32.onnx`, `student_qat_int8.tflite`."""
    tags = {"qat+int8": "qat_int8", "prune+int8": "pruned_int8"}
    return f"{stem}_{tags.get(quantization, quantization)}.{export_format}"


def planned_files(stem: str, plan: list[tuple[str, str]], qat: bool = False, prune: bool = False) -> list[str]:
    """The file names an export will write (checked for collisions before any work)."""
    names = [file_name(stem, export_format, quantization) for export_format, quantization in plan]
    names += [file_name(stem, "tflite", mode) for mode, wanted in (("qat+int8", qat), ("prune+int8", prune)) if wanted]
    return names + ["metadata.json", "export_report.json"]


@dataclasses.dataclass(frozen=True)
class ExportPlan:
    """One export worked out before anything converts: its files, and how they are converted.

    pairs: the (format, quantization) pairs of `export_plan`, one file each.
    stem: the files' name stem (`file_name`).
    fine_tunings: `FineTuning`s, one int8 TFLite file each, after QAT or pruning.
    dynamic_batch: keep the batch dimension free (else fixed to 1). opset: the ONNX opset.
    """

    pairs: tuple[tuple[str, str], ...]
    stem: str = "student"
    fine_tunings: tuple = ()
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET

    @property
    def files(self) -> list[str]:
        """Every file the export writes, metadata.json and export_report.json included (`planned_files`)."""
        modes = {fine_tuning.mode for fine_tuning in self.fine_tunings}
        return planned_files(self.stem, list(self.pairs), "qat" in modes, "prune" in modes)


@dataclasses.dataclass(frozen=True)
class OnnxInt8Config:
    """How onnxruntime's static quantization writes an int8 ONNX file (`onnxruntime.quantization.quantize_static`).

    quant_format: "QDQ" (QuantizeLinear/DequantizeLinear pairs around float ops,
        fused by the runtime) or "QOperator" (QLinearConv, QLinearMatMul, ...).
    activations: "int8" or "uint8" (weights are always int8: S8S8 or U8S8).
    per_channel: one scale per output channel of each weight instead of one per tensor.
    reduce_range: 7-bit weights, for CPUs whose int8 dot products overflow (pre-VNNI x86).

    The default is the fastest configuration on x86 whose top-1 held in
    `benchmarks/export.py` (benchmarks/results/export/): U8S8 ran the README's
    student in about half the time of S8S8 on an AVX2 CPU, whichever format,
    and U8S8 with 8-bit per-channel weights lost 0.5 points of top-1, which
    reduce_range won back (the AVX2 u8*s8 instruction saturates its 16-bit
    sums). Among configurations equally fast, QDQ and per-channel weights: the
    format every onnxruntime execution provider reads, and the granularity
    depthwise convolutions need. On ARM, S8S8 is onnxruntime's advice.
    """

    quant_format: str = "QDQ"
    activations: str = "uint8"
    per_channel: bool = True
    reduce_range: bool = True

    def __post_init__(self):
        if self.quant_format not in ("QDQ", "QOperator") or self.activations not in ("int8", "uint8"):
            raise ValueError(f"quant_format takes QDQ or QOperator, activations int8 or uint8. Received: {self}")

    @property
    def name(self) -> str:
        return (
            f"{self.quant_format} {'S8S8' if self.activations == 'int8' else 'U8S8'} "
            f"{'per-channel' if self.per_channel else 'per-tensor'}{' reduce_range' if self.reduce_range else ''}"
        )


@dataclasses.dataclass(frozen=True)
class FineTuning:
    """What a QAT or pruning bridge process does: the one contract between an export and the bridge.

    The bridge is `stkd_keras.export.tfmot_bridge`, a process of its own.
    The export writes it as JSON (`to_json`) and starts the bridge with
    `--spec FILE`; the bridge's command-line options build the same object.
    mode: "qat" or "prune". model / teacher: the Keras 3 .keras files.
    dataset, data_dir, mean, std: the images and their normalisation (mean and std default to the dataset's).
    epochs, batch_size, learning_rate, train_subset: the fine-tuning (Adam).
    method, hyperparameters: its distillation method (None: stkd with a teacher, ce without).
    initial_epoch: epochs the student has trained; the fine-tuning counts on from it (past a warm-up).
    sparsity: the pruning target. representative, eval_subset: calibration and evaluation images.
    output, report: the int8 .tflite file and the JSON report the bridge writes.
    """

    mode: str
    model: str
    dataset: str
    output: str = ""
    report: str = ""
    teacher: str | None = None
    data_dir: str | None = None
    mean: tuple | None = None
    std: tuple | None = None
    sparsity: float = 0.5
    epochs: int = 2
    train_subset: int | None = None
    eval_subset: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    method: str | None = None
    hyperparameters: dict = dataclasses.field(default_factory=dict)
    representative: int = 200
    seed: int = 0
    initial_epoch: int = 0

    def __post_init__(self):
        if self.mode not in ("qat", "prune"):
            raise ValueError(f"Expected mode 'qat' or 'prune'. Received: mode={self.mode!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("Give mean and std together, or neither.")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ValueError(f"Expected as many std values as mean values ({len(self.mean)}).")
        for name, least in (("epochs", 1), ("batch_size", 1), ("representative", 1), ("initial_epoch", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"Expected `{name}` to be an int >= {least}. Received: {name}={value!r}")
        if not isinstance(self.hyperparameters, dict):
            raise ValueError(
                f"Expected `hyperparameters` to be a mapping of names to values. Received: {self.hyperparameters!r}"
            )
        if not 0 < self.sparsity < 1:
            raise ValueError(f"Expected a sparsity in (0, 1). Received: sparsity={self.sparsity!r}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "FineTuning":
        """The object `to_json` wrote; unknown or missing fields are refused in one sentence."""
        payload = json.loads(text)
        names = {field.name for field in dataclasses.fields(cls)}
        required = {
            field.name
            for field in dataclasses.fields(cls)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        }
        if not isinstance(payload, dict) or set(payload) - names or required - set(payload):
            raise ValueError(
                f"A fine-tuning spec takes the fields {sorted(names)}, {sorted(required)} among them. "
                f"Received: {sorted(payload) if isinstance(payload, dict) else payload!r}"
            )
        for key in ("mean", "std"):
            if payload.get(key) is not None:
                payload[key] = tuple(payload[key])
        return cls(**payload)
