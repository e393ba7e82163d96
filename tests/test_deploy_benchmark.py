"""benchmarks/deploy.py's own arithmetic: students, MAC counts of keras.applications, and the table it writes.

The benchmark itself (distilling and exporting) is run by hand; see its docstring.
"""

import importlib.util
from pathlib import Path

import keras
import pytest

from stkd_keras.models import count_macs

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("deploy_benchmark", ROOT / "benchmarks" / "deploy.py")
deploy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(deploy)


def test_students_take_their_size_or_a_default():
    students = deploy.parse_students("MobileNetV3Small, resnet8,EfficientNetB0:128", 96)
    assert [(s.name, s.image_size, s.label) for s in students] == [
        ("MobileNetV3Small", 96, "MobileNetV3Small_96"),
        ("resnet8", 32, "resnet8_32"),  # a zoo network: 32x32 unless told
        ("EfficientNetB0", 128, "EfficientNetB0_128"),
    ]
    with pytest.raises(SystemExit, match="expected NAME or NAME:SIZE, got 'resnet8:big'"):
        deploy.parse_students("resnet8:big", 96)


@pytest.mark.parametrize(
    "name, options, published",
    [
        # Multiply-adds at 224x224, 1000 classes, from the papers: MobileNetV3-Small 1.0 56M (Howard et al. 2019,
        # Table 3), EfficientNet-B0 0.39B (Tan & Le 2019, Table 2), MobileNetV2 1.0 300M (Sandler et al. 2018).
        ("MobileNetV3Small", {"include_preprocessing": False}, 56e6),
        ("EfficientNetB0", {}, 390e6),
        ("MobileNetV2", {}, 300e6),
    ],
)
def test_count_macs_of_mobile_applications_matches_their_papers(name, options, published):
    model = getattr(keras.applications, name)(weights=None, input_shape=(224, 224, 3), **options)
    assert count_macs(model) == pytest.approx(published, rel=0.02)
    assert deploy.uncounted_layers(model) == []


def test_macs_marked_as_lower_bound_exactly_when_count_macs_misses_some():
    # A separable convolution, 8x8x3 -> 6x6x4 with a 3x3 kernel: depthwise 6*6*9*3 + pointwise 6*6*3*4 MACs.
    inputs = keras.Input((8, 8, 3))
    separable = keras.Model(inputs, keras.layers.SeparableConv2D(4, 3)(inputs))
    assert count_macs(separable) <= 972 + 432
    assert (count_macs(separable) < 972 + 432) == (deploy.uncounted_layers(separable) == ["SeparableConv2D"])
    # A backbone used as one layer under a new head: its own count plus the head's 576 * 10.
    backbone = keras.applications.MobileNetV3Small(
        weights=None, input_shape=(32, 32, 3), include_top=False, include_preprocessing=False
    )
    inputs = keras.Input((32, 32, 3))
    head = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    nested = keras.Model(inputs, head)
    assert count_macs(nested) <= count_macs(backbone) + 576 * 10
    missed = deploy.uncounted_layers(nested)
    assert (count_macs(nested) < count_macs(backbone) + 576 * 10) == (missed == ["nested models (MobileNetV3Small)"])


def run_entry(student: str, seed: int, keras_top1: float, tflite_top1: float, missed=()) -> dict:
    files = {
        "tflite": {"size_bytes": 2048, "top1": tflite_top1, "runtime_ms_1t": 1.234, "runtime_ms_2t": 0.75},
        "onnx": {"size_bytes": 3584, "top1": 0.5, "runtime_ms_1t": 2.0, "runtime_ms_2t": 1.0},
    }
    return {
        "student": student,
        "image_size": 96,
        "method": "stkd",
        "seed": seed,
        "parameters": 1540218,
        "macs": 11_060_000,
        "macs_uncounted_layers": list(missed),
        "keras_top1": keras_top1,
        "files": files,
    }


def test_table_gives_one_row_per_student_and_method_over_its_seeds():
    results = {
        "settings": {
            "seeds": [0, 1],
            "folder_size": 96,
            "epochs": 3,
            "train_images": 5000,
            "test_images": 2000,
            "repeats": 200,
        },
        "dataset": {"path": "data", "train_images": 5000, "validation_images": 2000},
        "teacher": {"model": "resnet20", "path": "t", "image_size": 32, "final_val_accuracy": 0.9},
        "environment": {"cpu": "CPU", "cores": 2, "ai_edge_litert": "2", "onnxruntime": "1", "date": "today"},
        "runs": [
            run_entry("MobileNetV3Small", 0, 0.8, 0.79),
            run_entry("Xception", 0, 0.7, 0.7, ["SeparableConv2D"]),
            run_entry("MobileNetV3Small", 1, 0.9, 0.85),
            run_entry("Xception", 1, 0.7, 0.7, ["SeparableConv2D"]),
        ],
    }
    lines = deploy.table(results)
    assert lines[0].startswith("Seeds 0, 1: top-1 is their mean (range)")
    assert "Teacher: resnet20 at 32x32, top-1 90.00." in lines[0]
    assert "3 epoch(s) on 5,000 training images; top-1 on the 2,000 validation images" in lines[0]
    assert lines[4:6] == [
        "| MobileNetV3Small | stkd | 96x96 | 1,540,218 | 11.1M | 85.00 (80.00-90.00) | 82.00 (79.00-85.00) | "
        "50.00 (50.00-50.00) | 2 | 4 | 1.23 / 0.75 | 2.00 / 1.00 |",
        "| Xception | stkd | 96x96 | 1,540,218 | 11.1M (at least) | 70.00 (70.00-70.00) | 70.00 (70.00-70.00) | "
        "50.00 (50.00-50.00) | 2 | 4 | 1.23 / 0.75 | 2.00 / 1.00 |",
    ]
    assert lines[-1] == "MACs marked *at least* leave out layers `count_macs` does not count: SeparableConv2D."
    results["settings"]["seeds"] = [0]
    results["runs"] = results["runs"][:1]
    lines = deploy.table(results)
    assert lines[0].startswith("One seed (0): the table shows what deploying each student costs, not a ranking")
    assert lines[-1].startswith("| MobileNetV3Small | stkd | 96x96 | 1,540,218 | 11.1M | 80.00 | 79.00 | 50.00 |")
