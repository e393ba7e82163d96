"""TFDS builders for Tiny-ImageNet-200 and CINIC-10, the two KD benchmarks TFDS lacks.

Importing this module registers `tiny_imagenet` and `cinic10` with TFDS
(tensorflow-datasets 4.9.10 has no builtin of either name), so the usual
calls work:

    import stkd_keras.tfds_builders  # noqa: F401
    builder = tfds.builder("tiny_imagenet", data_dir=TFDS_DIR)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))
    train = builder.as_dataset(split="train", as_supervised=True)

Each builder reads the official archive, or its extracted folder, from
`manual_dir` when it is there, and otherwise downloads the archive. Images
are checked while preparing: every one must decode and have the dataset's
size; grayscale (and RGBA) images are converted to RGB, so every example
decodes to (size, size, 3) uint8. A file that already is an RGB image in the
stored format is kept byte for byte. Examples are keyed by their path inside
the dataset folder, so the prepared order does not depend on where the data
sat. Images are decoded with TensorFlow (PIL is not a dependency).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import tensorflow as tf
import tensorflow_datasets as tfds

TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_ARCHIVE = "tiny-imagenet-200.zip"
TINY_IMAGENET_FOLDER = "tiny-imagenet-200"

CINIC10_URL = "https://datashare.ed.ac.uk/bitstream/handle/10283/3192/CINIC-10.tar.gz"
CINIC10_ARCHIVE = "CINIC-10.tar.gz"
CINIC10_FOLDER = "CINIC-10"
CINIC10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The official per-channel statistics of the CINIC-10 training set, in [0, 1] (Darlow et al. 2018).
CINIC10_MEAN = (0.47889522, 0.47227842, 0.43047404)
CINIC10_STD = (0.24205776, 0.23828046, 0.25874835)
# TFDS split name -> the archive's folder.
CINIC10_SPLIT_FOLDERS = {"train": "train", "validation": "valid", "test": "test"}

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_MAGIC_BYTES = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted by name; ValueError when there are none."""
    if not folder.is_dir():
        raise ValueError(f"Class folder {folder} does not exist.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"Class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return files


def _rgb_image_bytes(path: Path, size: int, encoding: str) -> bytes:
    """The image file at `path` as `encoding` ("jpeg" or "png") bytes of a size x size RGB image.

    The file's own bytes are returned when they already are that; other images
    are decoded to RGB (grayscale replicated to three channels, alpha dropped)
    and re-encoded (JPEG at quality 100, PNG losslessly).

    Raises:
        ValueError: If the file does not decode or is not size x size; the
            message names the file.
    """
    data = path.read_bytes()
    try:
        image = tf.io.decode_image(data, channels=0, expand_animations=False)
    except tf.errors.OpError as error:
        raise ValueError(
            f"Cannot decode image file {path}: corrupt, truncated or not an image ({error.message.splitlines()[-1]})."
        ) from None
    height, width, channels = image.shape
    if (height, width) != (size, size):
        raise ValueError(f"Image file {path} is {height}x{width}; expected {size}x{size}.")
    if channels == 3 and data.startswith(_MAGIC_BYTES[encoding]):
        return data
    rgb = tf.io.decode_image(data, channels=3, expand_animations=False)
    encoded = (
        tf.io.encode_jpeg(rgb, quality=100, chroma_downsampling=False) if encoding == "jpeg" else tf.io.encode_png(rgb)
    )
    return encoded.numpy()


def _find_dataset_folder(
    dl_manager: tfds.download.DownloadManager, *, folder_name: str, archive_name: str, url: str, marker: str
) -> Path:
    """The extracted dataset folder (the one holding `marker`), from `manual_dir` or else downloaded.

    In `manual_dir` we accept, in this order: `manual_dir/folder_name/`,
    `manual_dir` itself, or the archive `manual_dir/archive_name`. TFDS's
    default manual_dir (`<data_dir>/downloads/manual`) is shared by all
    datasets, so a manual_dir without our files falls back to downloading.
    """

    def dataset_folder_in(directory: Path) -> Path | None:
        return next((d for d in (directory / folder_name, directory) if (d / marker).exists()), None)

    try:
        manual_dir = Path(os.fspath(dl_manager.manual_dir))
    except AssertionError:  # TFDS's way of saying manual_dir is missing or empty.
        manual_dir = None
    if manual_dir is not None:
        found = dataset_folder_in(manual_dir)
        if found is not None:
            return found
        if (manual_dir / archive_name).is_file():
            extracted = Path(os.fspath(dl_manager.extract(manual_dir / archive_name)))
            found = dataset_folder_in(extracted)
            if found is None:
                raise ValueError(f"Archive {manual_dir / archive_name} holds no {marker} (looked in {extracted}).")
            return found
    extracted = Path(os.fspath(dl_manager.download_and_extract(url)))
    found = dataset_folder_in(extracted)
    if found is None:
        raise ValueError(f"The archive downloaded from {url} holds no {marker} (looked in {extracted}).")
    return found


def _check_no_unknown_folders(parent: Path, known: Sequence[str]) -> None:
    """ValueError naming `parent` when it is missing, or its first subfolder that is not a known class."""
    if not parent.is_dir():
        raise ValueError(f"Folder {parent} does not exist.")
    unknown = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name not in known)
    if unknown:
        raise ValueError(f"Folder {parent / unknown[0]} is not one of the {len(known)} classes of this dataset.")


# --- Tiny-ImageNet-200 ---------------------------------------------------------------------------


def read_wnids(path: str | os.PathLike) -> list[str]:
    """The WordNet ids of `wnids.txt`, one per non-empty line, in the file's order."""
    wnids = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not wnids:
        raise ValueError(f"{path} lists no classes.")
    duplicates = sorted({w for w in wnids if wnids.count(w) > 1})
    if duplicates:
        raise ValueError(f"{path} lists class {duplicates[0]!r} more than once.")
    return wnids


def tiny_imagenet_class_names(wnids: Sequence[str], words_path: str | os.PathLike) -> tuple[str, ...]:
    """The human-readable names of `wnids` from Tiny-ImageNet's `words.txt`.

    `words.txt` has one `wnid<TAB>names` line per WordNet id, e.g.
    `n01443537<TAB>goldfish, Carassius auratus`. After preparation the same
    names are in `builder.info.metadata["class_descriptions"]`, in label order.

    Args:
        wnids: WordNet ids, e.g. `builder.info.features["label"].names`.
        words_path: Path of `words.txt`.

    Returns:
        One name string per wnid, in the order of `wnids`.

    Raises:
        ValueError: If a wnid is not in `words.txt`.

    Example:
        >>> tiny_imagenet_class_names(["n01443537"], "tiny-imagenet-200/words.txt")
        ('goldfish, Carassius auratus',)
    """
    words = {}
    for line in Path(words_path).read_text().splitlines():
        wnid, _, names = line.partition("\t")
        words[wnid.strip()] = names.strip()
    missing = [w for w in wnids if w not in words]
    if missing:
        raise ValueError(f"Class {missing[0]!r} is not in {words_path}.")
    return tuple(words[w] for w in wnids)


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny-ImageNet-200: 64x64 RGB images of 200 ImageNet classes.

    Splits: `train` (500 images per class) and `validation` (50 per class,
    labelled by `val/val_annotations.txt`). The unlabelled `test` folder is
    left out. Labels are the wnids in the order of `wnids.txt`, read when
    preparing (so `info.features["label"]` has its names only then).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Offline, put in `manual_dir` either the official archive
    `{TINY_IMAGENET_ARCHIVE}` (from {TINY_IMAGENET_URL}) or its extracted
    folder `{TINY_IMAGENET_FOLDER}/` (or make `manual_dir` that folder, the one
    holding `wnids.txt`). Online, without either, the archive is downloaded.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Tiny-ImageNet-200: 100,000 training and 10,000 validation 64x64 images of 200 ImageNet classes."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(64, 64, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(),  # Names come from wnids.txt while preparing.
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
            metadata=tfds.core.MetadataDict(),
            citation="Le, Y. and Yang, X. Tiny ImageNet Visual Recognition Challenge. CS231N, Stanford, 2015.",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = _find_dataset_folder(
            dl_manager,
            folder_name=TINY_IMAGENET_FOLDER,
            archive_name=TINY_IMAGENET_ARCHIVE,
            url=TINY_IMAGENET_URL,
            marker="wnids.txt",
        )
        wnids = read_wnids(root / "wnids.txt")
        self.info.features["label"].names = wnids
        self.info.metadata["class_descriptions"] = list(tiny_imagenet_class_names(wnids, root / "words.txt"))

        _check_no_unknown_folders(root / "train", wnids)
        train = [
            (path, label) for label, wnid in enumerate(wnids) for path in _image_files(root / "train" / wnid / "images")
        ]

        annotations = root / "val" / "val_annotations.txt"
        label_of = {wnid: label for label, wnid in enumerate(wnids)}
        validation = []
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1].strip() not in label_of:
                raise ValueError(
                    f"{annotations} line {number}: {line!r} does not name a class of {root / 'wnids.txt'}."
                )
            validation.append((root / "val" / "images" / fields[0].strip(), label_of[fields[1].strip()]))
        return {
            "train": self._generate_examples(root, train),
            "validation": self._generate_examples(root, sorted(validation)),
        }

    def _generate_examples(self, root: Path, examples: list[tuple[Path, int]]):
        for path, label in examples:
            image = _rgb_image_bytes(path, 64, "jpeg")
            yield path.relative_to(root).as_posix(), {"image": image, "label": label, "id": path.name}


# --- CINIC-10 -------------------------------------------------------------------------------------


class Cinic10(tfds.core.GeneratorBasedBuilder):
    """CINIC-10: 270,000 32x32 RGB images of the CIFAR-10 classes, from CIFAR-10 and ImageNet.

    Splits: `train`, `validation` (the archive's `valid/`) and `test`, 90,000
    images each. Normalise with `CINIC10_MEAN` / `CINIC10_STD`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Offline, put in `manual_dir` either the official archive `{CINIC10_ARCHIVE}`
    (from {CINIC10_URL}) or its extracted folders `train/`, `valid/` and
    `test/` (directly in `manual_dir` or in `manual_dir/{CINIC10_FOLDER}/`).
    Online, without either, the archive is downloaded.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="CINIC-10: CIFAR-10 extended with downsampled ImageNet images; 90,000 32x32 images per split.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=CINIC10_CLASSES),
                    "id": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/BayesWatch/cinic-10",
            citation=(
                "Darlow, L. N., Crowley, E. J., Antoniou, A. and Storkey, A. J. CINIC-10 is not ImageNet or CIFAR-10. "
                "arXiv:1810.03505, 2018."
            ),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = _find_dataset_folder(
            dl_manager, folder_name=CINIC10_FOLDER, archive_name=CINIC10_ARCHIVE, url=CINIC10_URL, marker="train"
        )
        splits = {}
        for split, folder_name in CINIC10_SPLIT_FOLDERS.items():
            folder = root / folder_name
            _check_no_unknown_folders(folder, CINIC10_CLASSES)
            examples = [
                (path, label) for label, name in enumerate(CINIC10_CLASSES) for path in _image_files(folder / name)
            ]
            splits[split] = self._generate_examples(root, examples)
        return splits

    def _generate_examples(self, root: Path, examples: list[tuple[Path, int]]):
        for path, label in examples:
            yield (
                path.relative_to(root).as_posix(),
                {"image": _rgb_image_bytes(path, 32, "png"), "label": label, "id": path.name},
            )
