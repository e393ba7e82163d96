"""The Tiny-ImageNet and CINIC-10 TFDS builders, prepared offline from tiny fakes with the real layouts."""

import re
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from stkd_keras import tfds_builders

# Not sorted, so a test can tell the file's order from sorted order.
WNIDS = ("n09999999", "n01443537", "n04067472")
WORDS = {
    "n09999999": "made-up thing",
    "n01443537": "goldfish, Carassius auratus",
    "n04067472": "reel",
    "n00000001": "unused",
}
# id -> (label, colour written); one training image is grayscale.
TINY_TRAIN = {
    f"{wnid}_{i}.JPEG": (label, (40 + 60 * label, 200 - 60 * label, 100 + 50 * i))
    for label, wnid in enumerate(WNIDS)
    for i in range(2)
}
TINY_GRAY = f"{WNIDS[1]}_1.JPEG"
TINY_TRAIN[TINY_GRAY] = (1, (77, 77, 77))
TINY_VALIDATION = {
    "val_0.JPEG": (2, (10, 120, 240)),
    "val_1.JPEG": (0, (250, 250, 5)),
    "val_2.JPEG": (1, (128, 64, 32)),
}


def _jpeg(colour, channels=3, size=64) -> bytes:
    image = np.full((size, size, channels), colour[:channels], np.uint8)
    return tf.io.encode_jpeg(image, quality=100).numpy()


def _write_tiny_imagenet(root):
    """A 3-class Tiny-ImageNet in `root` (the folder holding wnids.txt)."""
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in WNIDS))
    (root / "words.txt").write_text("".join(f"{w}\t{names}\n" for w, names in WORDS.items()))
    for name, (label, colour) in TINY_TRAIN.items():
        folder = root / "train" / WNIDS[label] / "images"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(_jpeg(colour, channels=1 if name == TINY_GRAY else 3))
        (root / "train" / WNIDS[label] / f"{WNIDS[label]}_boxes.txt").write_text("")
    lines = []
    for name, (label, colour) in TINY_VALIDATION.items():
        (root / "val" / "images" / name).write_bytes(_jpeg(colour))
        lines.append(f"{name}\t{WNIDS[label]}\t0\t1\t62\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))


def _prepare(name, tmp_path, manual):
    builder = tfds.builder(name, data_dir=str(tmp_path / "tfds"), config=None)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return builder


def _examples(builder, split):
    return {
        example["id"].decode(): example
        for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
    }


def _stored_images(builder, split):
    """id -> the image bytes as stored in the prepared records."""
    dataset = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return {example["id"].decode(): example["image"] for example in tfds.as_numpy(dataset)}


def test_builders_are_registered_under_their_names(tmp_path):
    assert isinstance(tfds.builder("tiny_imagenet", data_dir=str(tmp_path)), tfds_builders.TinyImagenet)
    assert isinstance(tfds.builder("cinic10", data_dir=str(tmp_path)), tfds_builders.Cinic10)


@pytest.mark.parametrize("layout", ["folder_in_manual_dir", "manual_dir_is_folder", "zip"])
def test_tiny_imagenet(tmp_path, layout):
    manual = tmp_path / "manual"
    if layout == "manual_dir_is_folder":
        _write_tiny_imagenet(manual)
    else:
        _write_tiny_imagenet(tmp_path / "source" / "tiny-imagenet-200")
    if layout == "folder_in_manual_dir":
        (tmp_path / "source").rename(manual)
    elif layout == "zip":
        manual.mkdir()
        with zipfile.ZipFile(manual / "tiny-imagenet-200.zip", "w") as archive:
            for path in sorted((tmp_path / "source").rglob("*")):
                archive.write(path, path.relative_to(tmp_path / "source").as_posix())

    builder = _prepare("tiny_imagenet", tmp_path, manual)

    assert builder.info.features["label"].names == list(WNIDS)
    assert builder.info.metadata["class_descriptions"] == ["made-up thing", "goldfish, Carassius auratus", "reel"]
    assert {s: builder.info.splits[s].num_examples for s in ("train", "validation")} == {"train": 6, "validation": 3}
    for split, expected in (("train", TINY_TRAIN), ("validation", TINY_VALIDATION)):
        examples = _examples(builder, split)
        assert sorted(examples) == sorted(expected)
        for name, (label, colour) in expected.items():
            image = examples[name]["image"]
            assert examples[name]["label"] == label, name
            assert image.shape == (64, 64, 3) and image.dtype == np.uint8
            # JPEG at quality 100 of a flat colour is within a level or two of it.
            np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), colour, atol=2, err_msg=name)
    gray = _examples(builder, "train")[TINY_GRAY]["image"]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    # Stored as written when already RGB JPEG; the grayscale one is stored converted to RGB.
    stored = _stored_images(builder, "train")
    assert stored[f"{WNIDS[0]}_0.JPEG"] == _jpeg(TINY_TRAIN[f"{WNIDS[0]}_0.JPEG"][1])
    assert tf.io.decode_image(stored[TINY_GRAY], channels=0).shape == (64, 64, 3)

    image, label = next(iter(builder.as_dataset(split="validation", as_supervised=True)))
    assert image.shape == (64, 64, 3) and image.dtype == tf.uint8 and label.dtype == tf.int64


def test_prepared_tiny_imagenet_reloads_names_and_descriptions(tmp_path):
    _write_tiny_imagenet(tmp_path / "manual")
    _prepare("tiny_imagenet", tmp_path, tmp_path / "manual")
    reloaded = tfds.builder("tiny_imagenet", data_dir=str(tmp_path / "tfds"))
    assert reloaded.info.features["label"].names == list(WNIDS)
    assert reloaded.info.metadata["class_descriptions"][1] == "goldfish, Carassius auratus"
    assert tfds_builders.tiny_imagenet_class_names(["n04067472"], tmp_path / "manual" / "words.txt") == ("reel",)


def test_tiny_imagenet_unknown_wnid_names_the_line(tmp_path):
    root = tmp_path / "manual"
    _write_tiny_imagenet(root)
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("val_3.JPEG\tn11111111\t0\t0\t10\t10\n")
    with pytest.raises(ValueError, match=r"val_annotations\.txt line 4: 'val_3\.JPEG\\tn11111111"):
        _prepare("tiny_imagenet", tmp_path, root)


def test_tiny_imagenet_empty_class_folder_is_named(tmp_path):
    root = tmp_path / "manual"
    _write_tiny_imagenet(root)
    folder = root / "train" / WNIDS[2] / "images"
    for path in folder.iterdir():
        path.unlink()
    with pytest.raises(ValueError, match=re.escape(f"Class folder {folder} holds no images")):
        _prepare("tiny_imagenet", tmp_path, root)


@pytest.mark.parametrize("problem", ["truncated", "wrong_size"])
def test_tiny_imagenet_bad_image_is_named(tmp_path, problem):
    root = tmp_path / "manual"
    _write_tiny_imagenet(root)
    bad = root / "val" / "images" / "val_1.JPEG"
    if problem == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
        message = f"Cannot decode image file {bad}"
    else:
        bad.write_bytes(_jpeg((1, 2, 3), size=32))
        message = f"Image file {bad} is 32x32; expected 64x64"
    with pytest.raises(ValueError, match=re.escape(message)):
        _prepare("tiny_imagenet", tmp_path, root)


# --- CINIC-10 ---

CINIC_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}
CINIC_GRAY = ("valid", "cat")


def _cinic_image(split_index, label, gray):
    """A 32x32 image whose every pixel says where it came from; grayscale images have one channel."""
    rows = np.arange(32, dtype=np.uint8)[:, None, None]
    image = np.broadcast_to(rows + np.array([100 + 10 * label, 50 * split_index, 7], np.uint8), (32, 32, 3))
    return image[..., :1] if gray else image


def _write_cinic10(root):
    for split_index, folder in enumerate(CINIC_FOLDERS.values()):
        for label, name in enumerate(tfds_builders.CINIC10_CLASSES):
            (root / folder / name).mkdir(parents=True)
            image = _cinic_image(split_index, label, gray=(folder, name) == CINIC_GRAY)
            (root / folder / name / f"{folder}-{name}-0.png").write_bytes(tf.io.encode_png(image).numpy())


@pytest.mark.parametrize("layout", ["folder", "tar_gz"])
def test_cinic10(tmp_path, layout):
    manual = tmp_path / "manual"
    if layout == "folder":
        _write_cinic10(manual / "CINIC-10")
        builder = _prepare("cinic10", tmp_path, manual)
    else:
        # The official archive holds train/, valid/ and test/ at its top level.
        _write_cinic10(tmp_path / "source")
        manual.mkdir()
        with tarfile.open(manual / "CINIC-10.tar.gz", "w:gz") as archive:
            for folder in CINIC_FOLDERS.values():
                archive.add(tmp_path / "source" / folder, arcname=folder)
        # tfds.load passes download_config through download_and_prepare_kwargs.
        train = tfds.load(
            "cinic10",
            split="train",
            data_dir=str(tmp_path / "tfds"),
            download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=str(manual))},
        )
        assert int(train.cardinality()) == 10
        builder = tfds.builder("cinic10", data_dir=str(tmp_path / "tfds"))

    assert builder.info.features["label"].names == list(tfds_builders.CINIC10_CLASSES)
    assert {s: builder.info.splits[s].num_examples for s in CINIC_FOLDERS} == {s: 10 for s in CINIC_FOLDERS}
    for split_index, (split, folder) in enumerate(CINIC_FOLDERS.items()):
        examples = _examples(builder, split)
        for label, name in enumerate(tfds_builders.CINIC10_CLASSES):
            example = examples[f"{folder}-{name}-0.png"]
            assert example["label"] == label
            expected = _cinic_image(split_index, label, gray=False)
            if (folder, name) == CINIC_GRAY:
                expected = np.repeat(expected[..., :1], 3, axis=-1)
            np.testing.assert_array_equal(example["image"], expected)
    assert tf.io.decode_image(_stored_images(builder, "validation")["valid-cat-0.png"], channels=0).shape == (32, 32, 3)
    image, label = next(iter(builder.as_dataset(split="test", as_supervised=True)))
    assert image.shape == (32, 32, 3) and image.dtype == tf.uint8 and label.dtype == tf.int64


@pytest.mark.parametrize("problem", ["corrupt", "empty_folder", "missing_folder"])
def test_cinic10_bad_data_is_named(tmp_path, problem):
    root = tmp_path / "manual"
    _write_cinic10(root)
    folder = root / "valid" / "horse"
    if problem == "corrupt":
        bad = folder / "valid-horse-0.png"
        bad.write_bytes(b"not a png")
        message = f"Cannot decode image file {bad}"
    else:
        (folder / "valid-horse-0.png").unlink()
        message = f"Class folder {folder} holds no images"
        if problem == "missing_folder":
            folder.rmdir()
            message = f"Class folder {folder} does not exist"
    with pytest.raises(ValueError, match=re.escape(message)):
        _prepare("cinic10", tmp_path, root)


def test_cinic10_normalisation_constants():
    assert tfds_builders.CINIC10_MEAN == (0.47889522, 0.47227842, 0.43047404)
    assert tfds_builders.CINIC10_STD == (0.24205776, 0.23828046, 0.25874835)


def test_data_load_reads_tiny_imagenet_and_cinic10_from_data_dir(tmp_path):
    """The user's path: stkd_keras.data.load with --data-dir holding the extracted sets, offline."""
    from stkd_keras import data as data_lib

    tiny = tmp_path / "tiny" / "tiny-imagenet-200"
    _write_tiny_imagenet(tiny)
    test, info = data_lib.load(
        "tiny_imagenet", "test", batch_size=8, data_dir=tiny.parent, tfds_dir=tmp_path / "tfds", download=False
    )
    assert info.input_shape == (64, 64, 3) and info.num_examples == len(TINY_VALIDATION)
    images, labels = next(iter(test))
    assert images.shape[1:] == (64, 64, 3)
    # The test split is Tiny-ImageNet's labelled validation split: labels as annotated, in file order.
    expected = [label for _, (label, _) in sorted(TINY_VALIDATION.items())]
    assert sorted(labels.numpy().tolist()) == sorted(expected)

    cinic = tmp_path / "cinic"
    _write_cinic10(cinic)
    train, info = data_lib.load(
        "cinic10",
        "train",
        batch_size=4,
        data_dir=cinic,
        tfds_dir=tmp_path / "tfds",
        download=False,
        augment=False,
        shuffle=False,
    )
    assert info.num_classes == 10 and info.num_examples == 10 and info.mean == tfds_builders.CINIC10_MEAN
    images, labels = next(iter(train))
    label = int(labels[0])
    # Pixel (row 0) of a CINIC train image is (100 + 10 * label, 0, 7), normalised with the official constants.
    raw = np.array([100 + 10 * label, 0, 7]) / 255.0
    np.testing.assert_allclose(images[0, 0, 0], (raw - np.array(info.mean)) / np.array(info.std), atol=1e-5)
