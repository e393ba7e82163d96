"""benchmarks/fashion_mnist_folder.py: Fashion-MNIST written as a `folder:` dataset that `data.load` reads back."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stkd_keras import data as data_lib
from stkd_keras import idx

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fashion_mnist_folder", ROOT / "benchmarks" / "fashion_mnist_folder.py")
folder_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(folder_script)


def first_of_each_class(labels: np.ndarray, per_class: int) -> dict[int, list[int]]:
    """The rule the script documents, worked out plainly: each class's first images in the seed-0 shuffle."""
    chosen = {label: [] for label in range(10)}
    for index in np.random.default_rng(0).permutation(len(labels)):
        if len(chosen[labels[index]]) < per_class:
            chosen[labels[index]].append(int(index))
    return chosen


def loaded(path: Path, split: str):
    """Raw pixels (uint8, undoing the pipeline's normalisation) and labels of a split read by `data.load`."""
    batches, info = data_lib.load(f"folder:{path}", split, 64, image_size=(32, 32), augment=False, shuffle=False)
    images = np.concatenate([np.asarray(x) for x, _ in batches])
    labels = np.concatenate([np.asarray(y) for _, y in batches])
    pixels = np.rint((images * np.array(info.std) + np.array(info.mean)) * 255)
    return pixels, labels, info


def test_written_folder_loads_with_pil_bilinear_pixels(tmp_path):
    output = tmp_path / "fm32"
    counts = folder_script.write_folder(output, size=32, train_images=20, test_images=10)
    assert counts == {"train": 20, "val": 10}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fm32"]  # no temporary folder left beside it
    directory = idx.find_fashion_mnist_idx()
    for split, folder, per_class in (("train", "train", 2), ("test", "val", 1)):
        raw, raw_labels = idx.read_fashion_mnist_idx(directory, split)
        chosen = first_of_each_class(raw_labels, per_class)
        pixels, labels, info = loaded(output, "train" if split == "train" else "test")
        assert info.num_classes == 10 and info.input_shape == (32, 32, 3) and info.num_examples == 10 * per_class
        # The class folders sort in label order, so the reader's class numbers are Fashion-MNIST's.
        assert info.class_names[0] == "0_T-shirt_top" and info.class_names[9] == "9_Ankle_boot"
        # The reader lists each class's files in name order: the IDX indices, sorted.
        expected = [index for label in range(10) for index in sorted(chosen[label])]
        np.testing.assert_array_equal(labels, raw_labels[expected])
        for name_label in range(10):
            names = sorted(p.name for p in (output / folder / info.class_names[name_label]).iterdir())
            assert names == [f"{index:05d}.png" for index in sorted(chosen[name_label])]
        for position, index in enumerate(expected):
            gray = Image.fromarray(raw[index, :, :, 0]).resize((32, 32), Image.Resampling.BILINEAR)
            np.testing.assert_array_equal(pixels[position], np.repeat(np.asarray(gray)[..., None], 3, axis=-1))


def test_balanced_order_is_balanced_prefix():
    labels = np.repeat(np.arange(10), [5, 7, 3, 9, 4, 6, 8, 5, 7, 6])
    order = folder_script.balanced_order(labels)
    assert sorted(order) == list(range(len(labels)))
    # Among the first 30: three of each class (every class has at least 3).
    np.testing.assert_array_equal(np.bincount(labels[order[:30]], minlength=10), [3] * 10)
    # Class 2 has only 3 images: after 30 the others fill in, never class 2 again.
    assert 2 not in labels[order[30:]]


def test_refuses_non_empty_output_and_overwrites_on_request(tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    arguments = ["--output", str(output), "--size", "8", "--train-images", "10", "--test-images", "10"]
    with pytest.raises(SystemExit, match=r"out already exists and is not empty; pass --overwrite to replace it\."):
        folder_script.main(arguments)
    assert (output / "keep.txt").read_text() == "mine"
    with pytest.raises(SystemExit, match=r"test split has 10,000 images; asked for 10,001"):
        folder_script.main([*arguments[:-1], "10001", "--overwrite"])
    assert (output / "keep.txt").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    folder_script.main([*arguments, "--overwrite"])
    assert "Wrote 10 training and 10 validation images (8x8 RGB PNG" in capsys.readouterr().out
    assert sorted(p.name for p in output.iterdir()) == ["train", "val"]
    assert len(list((output / "val").rglob("*.png"))) == 10
    with Image.open(next((output / "train").rglob("*.png"))) as image:
        assert image.mode == "RGB" and image.size == (8, 8)
