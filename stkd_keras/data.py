"""Datasets as batched pipelines of normalised images, through one `load` API.

Sources:
- `fashion_mnist`: the four IDX files (Debian's `dataset-fashion-mnist`
  installs them in `/usr/share/datasets/fashion-mnist`; `data_dir` overrides),
  falling back to `tfds.load` when they are not there.
- `mnist`: the same four IDX files when `data_dir` holds them, else `tfds.load`
  (with `data_dir` as the TFDS data directory).
- `cifar10`, `cifar100`: `tfds.load`, which downloads when online (with
  `data_dir` as the TFDS data directory).
- `cinic10`, `tiny_imagenet`: TFDS builders of this project
  (`stkd_keras.tfds_builders`) that download the official archive when online
  and otherwise read it, or its extracted folder, from `data_dir` (TFDS's
  manual_dir); `tfds_dir` is where TFDS keeps the prepared data.
- `folder:PATH`: your own images in `PATH/<class>/*.jpg|png|...` (or
  `PATH/train/<class>` with `PATH/val/<class>`), resized to `image_size`,
  with a deterministic validation split when none is given.
- Arrays you hold already: `load_arrays`.

Any architecture's input, from any dataset: `load(..., image_size=(h, w))`
resizes every split once, when it is read, so both pipelines batch the same
uint8 pixels: IDX files with Pillow's bilinear filter (numpy only, no
TensorFlow), TFDS datasets and image folders with
`tf.image.resize(..., antialias=True)`, rounded to uint8. Both are a
triangle filter over pixel centres that widens when shrinking (antialiased);
they differ by at most 1 in 255 (Pillow rounds between its two passes). The
dataset's own size reads the files unchanged, and the augmentation's crop
padding scales with the height (`DatasetSpec.resized`). The split is held at
the new size: Fashion-MNIST's 60,000 training images take 60000 * h * w
bytes (553 MB at 96x96, 3.0 GB at 224x224), resized in about 4 s at 96x96
and 12 to 18 s at 224x224 on one idle core (up to 8 threads share the work);
tf.data's shuffle buffer holds up to 20,000 images of a TFDS dataset at the
new size. `channels=3` gives a 1-channel dataset three equal channels,
repeated in every batch after augmentation (the split stays 1-channel in
memory; only the float32 batches are three times as large), with its
mean/std repeated too, so each channel is normalised as the gray one was.
Colour is never converted to gray.

Two pipelines build the batches; `load(..., pipeline=...)` chooses:
- "tf_data": a prefetched `tf.data.Dataset`: decode, augment (training only:
  random crop after zero padding, plus horizontal flip where flipping keeps
  the class), normalise with the dataset's mean/std, shuffle, batch. Its
  augmentation draws are stateless and seeded.
- "numpy": a `keras.utils.PyDataset` of numpy batches over the split held in
  memory (`stkd_keras.array_pipeline`): the same kind of augmentation and the
  same normalisation with numpy's draws, for Keras on JAX or PyTorch without
  TensorFlow. IDX datasets need nothing else; TFDS datasets and image folders
  are read with TensorFlow and then held as arrays.
- "auto" (the default): "tf_data" where `import tensorflow` works, else "numpy".

Either way the same seed gives the same batches. Augmentation lives here,
never inside a model, so exported models hold none of it. As in the KD
literature, the test split (Tiny-ImageNet: the labelled validation split)
serves for validation. To choose settings without reading it, `holdout=N`
sets the last N examples of the training split (by a fixed shuffle) apart as
the split "validation", and "train" no longer contains them.

This module holds what the datasets are (`DatasetSpec`, `get_spec`,
`DatasetInfo`) and the entry points. Each source reads one split into a
`stkd_keras.data_sources.RawSplit` (`data_sources`: IDX files, TFDS and
arrays; `image_folder`: `folder:` datasets), and `stkd_keras.batches` builds
the batches of every one of them. TensorFlow is imported only inside the
functions that need it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import numpy as np

from stkd_keras.backend_selection import tensorflow_available
from stkd_keras.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_MEAN, FASHION_MNIST_STD, idx_file_names

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from stkd_keras.data_sources import RawSplit

# The sources (`data_sources`, `image_folder`) and the batch builder (`batches`) import the catalogue below from
# this module, so the functions here import them where they use them.

SPLITS = ("train", "test", "validation")
FOLDER_PREFIX = "folder:"
PIPELINES = ("auto", "tf_data", "numpy")
INSTALL_TENSORFLOW = "pip install 'stkd-keras[tensorflow]'"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset before reading it.

    `tfds_splits` maps our split names to the TFDS ones; `manual` datasets read
    their raw archive or folder from `data_dir` (TFDS's manual_dir).
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    download_host: str = ""
    class_names: tuple[str, ...] | None = None
    tfds_splits: tuple[tuple[str, str], ...] = (("train", "train"), ("test", "test"))
    manual: bool = False

    def resized(self, image_size: tuple[int, int] | None) -> DatasetSpec:
        """This dataset at `image_size` (None: its own): the input shape, and the crop padding scaled with the height.

        The padding keeps its share of the image (Fashion-MNIST's 2 pixels of
        28 become 7 of 96), so a random crop moves the content as far, relative
        to the image, as at the native size.
        """
        if image_size is None or tuple(image_size) == self.input_shape[:2]:
            return self
        height, width = image_size
        padding = max(1, round(self.crop_padding * height / self.input_shape[0])) if self.crop_padding else 0
        return dataclasses.replace(self, input_shape=(height, width, self.input_shape[2]), crop_padding=padding)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a loaded split is: shapes, classes, normalisation and where it came from.

    `input_shape` is that of one image in the batches (`image_size` and
    `channels` applied). `classes_present` is the number of classes with at
    least one example in the split when that is known without an extra pass
    (None otherwise).
    """

    name: str
    split: str
    num_classes: int
    input_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_examples: int
    source: str
    classes_present: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SPECS = {
    "fashion_mnist": DatasetSpec(
        "fashion_mnist",
        (28, 28, 1),
        10,
        FASHION_MNIST_MEAN,
        FASHION_MNIST_STD,
        2,
        True,
        "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        FASHION_MNIST_CLASSES,
    ),
    # Digits change meaning when mirrored: crop only.
    "mnist": DatasetSpec(
        "mnist",
        (28, 28, 1),
        10,
        (0.1307,),
        (0.3081,),
        2,
        False,
        "storage.googleapis.com",
        tuple(str(i) for i in range(10)),
    ),
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True, "www.cs.toronto.edu"
    ),
    "cifar100": DatasetSpec(
        "cifar100", (32, 32, 3), 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True, "www.cs.toronto.edu"
    ),
    # The official CINIC-10 statistics (Darlow et al. 2018).
    "cinic10": DatasetSpec(
        "cinic10",
        (32, 32, 3),
        10,
        (0.47889522, 0.47227842, 0.43047404),
        (0.24205776, 0.23828046, 0.25874835),
        4,
        True,
        "datashare.ed.ac.uk",
        manual=True,
    ),
    # Tiny-ImageNet's test labels are not public: its labelled validation split is the test split.
    "tiny_imagenet": DatasetSpec(
        "tiny_imagenet",
        (64, 64, 3),
        200,
        (0.4802, 0.4481, 0.3975),
        (0.2302, 0.2265, 0.2262),
        8,
        True,
        "cs231n.stanford.edu",
        tfds_splits=(("train", "train"), ("test", "validation")),
        manual=True,
    ),
}


class DatasetNotFoundError(RuntimeError):
    """A dataset is neither on this machine nor downloadable; the message says where we looked."""


def list_datasets() -> list[str]:
    """Names accepted by `load` (`folder:PATH` stands for any image folder)."""
    return [*_SPECS, f"{FOLDER_PREFIX}PATH"]


def get_spec(name: str) -> DatasetSpec:
    """The `DatasetSpec` of a named dataset; raises `ValueError` listing valid names."""
    if name not in _SPECS:
        raise ValueError(f"Unknown dataset {name!r}. Expected one of: {', '.join(list_datasets())}.")
    return _SPECS[name]


def resolve_pipeline(pipeline: str = "auto") -> str:
    """The pipeline `load` builds for `pipeline`: "tf_data" or "numpy" ("auto": "tf_data" where TensorFlow imports).

    Raises:
        ValueError: For an unknown name, or "tf_data" without TensorFlow.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"Expected `pipeline` to be one of {PIPELINES}. Received: pipeline={pipeline!r}")
    if pipeline == "auto":
        return "tf_data" if tensorflow_available() else "numpy"
    if pipeline == "tf_data" and not tensorflow_available():
        raise ValueError(
            f"The tf_data pipeline needs TensorFlow, which cannot be imported here; install it ({INSTALL_TENSORFLOW}) "
            "or use pipeline='numpy'."
        )
    return pipeline


# --- Loading -------------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _checked_image_size(name: str, image_size, channels) -> tuple[int, int] | None:
    """`image_size` as two ints; refuses one that is not two sizes >= 1, and a `channels` that `name` cannot take."""
    if image_size is not None and (
        not isinstance(image_size, (tuple, list))
        or len(image_size) != 2
        or not all(_is_int(v) and v >= 1 for v in image_size)
    ):
        raise ValueError(f"Expected `image_size` = (height, width), two ints >= 1. Received: image_size={image_size!r}")
    image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
    if channels is None:
        return image_size
    own = 3 if name.startswith(FOLDER_PREFIX) else get_spec(name).input_shape[-1]
    if own == 3 and channels == 1:
        raise ValueError(
            f"Expected `channels` = 3 or None for {name!r}, whose images are in colour (colour is never converted to "
            "gray). Received: channels=1"
        )
    if not _is_int(channels) or channels not in (own, 3):
        raise ValueError(
            f"Expected `channels` = None, {' or '.join(map(str, sorted({own, 3})))} for {name!r}. Received: "
            f"channels={channels!r}"
        )
    return image_size


def _check_options(split, batch_size, subset, stream, start_step, shard, holdout=None) -> None:
    if split not in SPLITS:
        raise ValueError(f"Expected `split` to be one of {SPLITS}. Received: split={split!r}")
    if holdout is not None and (not isinstance(holdout, (int, np.integer)) or holdout < 1):
        raise ValueError(f"Expected `holdout` to be an int >= 1 or None. Received: holdout={holdout!r}")
    if split == "validation" and holdout is None:
        raise ValueError("The split 'validation' is the training examples set apart by `holdout`: pass holdout=N.")
    if split == "test" and holdout is not None:
        raise ValueError(
            "Expected `holdout` only with the 'train' and 'validation' splits (it divides the training split). "
            f"Received: split={split!r}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be an int >= 1. Received: batch_size={batch_size!r}")
    if subset is not None and (not isinstance(subset, int) or subset < 1):
        raise ValueError(f"Expected `subset` to be an int >= 1 or None. Received: subset={subset!r}")
    if not isinstance(start_step, (int, np.integer)) or start_step < 0:
        raise ValueError(f"Expected `start_step` to be an int >= 0. Received: start_step={start_step!r}")
    if shard is not None:
        if not stream:
            raise ValueError(
                "Expected `shard` only with stream=True (it slices every global training batch). Received: "
                f"shard={shard!r}"
            )
        if len(shard) != 2 or not all(isinstance(v, (int, np.integer)) for v in shard) or not 0 <= shard[0] < shard[1]:
            raise ValueError(f"Expected `shard` = (index, count) with 0 <= index < count. Received: shard={shard!r}")
        if batch_size % shard[1]:
            raise ValueError(
                f"Expected the global batch size to divide evenly over {shard[1]} shards. Received: "
                f"batch_size={batch_size}"
            )


def load(
    name: str,
    split: str = "train",
    batch_size: int = 128,
    augment: bool | None = None,
    shuffle: bool | None = None,
    subset: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    seed: int = 0,
    drop_remainder: bool = False,
    image_size: tuple[int, int] | None = None,
    normalization: tuple | None = None,
    tfds_dir: str | os.PathLike | None = None,
    stream: bool = False,
    start_step: int = 0,
    pipeline: str = "auto",
    shard: tuple[int, int] | None = None,
    holdout: int | None = None,
    channels: int | None = None,
) -> tuple[tf.data.Dataset | keras.utils.PyDataset, DatasetInfo]:
    """Loads one split as batches of (images, labels): a `tf.data.Dataset` or a `keras.utils.PyDataset` of numpy arrays.

    Images are float32, normalised with the dataset's mean/std; labels are int64 class ids. `pipeline` chooses what
    builds the batches (see the module docstring); both honour every argument.

    Args:
        name: One of `list_datasets()`, or `folder:PATH`.
        split: "train", "test" (for validation unless a holdout is set apart) or "validation" (needs `holdout`).
        batch_size, augment, shuffle, seed, drop_remainder, stream, start_step, shard: How the batches are drawn
            (`stkd_keras.batches.BatchOptions`); `augment` and `shuffle` default to True for "train".
        subset: Use only `subset` examples: from IDX files and image folders the first `subset` of the fixed shuffle
            `np.random.default_rng(0).permutation(n)` (the same for every seed, method and pipeline); from TFDS, the
            first `subset`. With `holdout`, of the examples left to the split.
        data_dir: Where the dataset's files are; what that means for each dataset: the module docstring's sources.
        download: Let tfds download a missing dataset.
        image_size, channels: The (height, width) and channels of the batches' images; None: the dataset's own
            (`folder:` 32x32x3). 3 channels from 1 repeat the gray one; colour is never made gray (module docstring).
        normalization: (mean, std) to use instead of the dataset's own, e.g. those stored with a trained model.
        tfds_dir: Where TFDS keeps prepared cinic10 / tiny_imagenet (default: TFDS's own, `~/tensorflow_datasets`).
        pipeline: "auto" (tf.data where TensorFlow imports, else numpy), "tf_data" or "numpy".
        holdout: Set the last `holdout` training examples apart as the split "validation" (from IDX files and image
            folders: the last of the fixed shuffle above, so a training subset keeps its examples; from TFDS: the
            last in TFDS's order); "train" then reads only the others. Pass the same value for both splits.

    Returns:
        `(dataset, info)`: a `tf.data.Dataset` ("tf_data") or a `keras.utils.PyDataset` ("numpy").

    Raises:
        ValueError: For an unknown name, split or pipeline, invalid sizes or channels, or bad data (naming the file).
        DatasetNotFoundError: When the data is neither here nor downloadable, or needs TensorFlow and it is missing.
    """
    from stkd_keras import batches

    _check_options(split, batch_size, subset, stream, start_step, shard, holdout)
    image_size = _checked_image_size(name, image_size, channels)
    pipeline = resolve_pipeline(pipeline)
    raw = _read_split(name, split, subset, holdout, data_dir, download, image_size, tfds_dir)
    options = batches.BatchOptions(batch_size, augment, shuffle, seed, drop_remainder, stream, start_step, shard)
    return batches.build_batches(raw, options, pipeline, normalization, channels)


def _read_split(name, split, subset, holdout, data_dir, download, image_size, tfds_dir) -> RawSplit:
    """The examples of `split` that `load` batches, read by the source that holds `name`."""
    from stkd_keras import data_sources, image_folder

    if name.startswith(FOLDER_PREFIX):
        if not tensorflow_available():
            raise data_sources.tensorflow_missing(name, data_dir)
        return image_folder.read_folder_split(name, split, subset, holdout, image_size)
    spec = get_spec(name)
    directory = data_sources.idx_directory(name, data_dir)
    if name == "fashion_mnist" and data_dir is not None and directory is None:
        raise DatasetNotFoundError(f"Fashion-MNIST IDX files ({', '.join(idx_file_names())}) not found in {data_dir}.")
    if directory is not None:
        return data_sources.read_idx_split(spec, directory, split, subset, holdout, image_size)
    if not tensorflow_available():
        raise data_sources.tensorflow_missing(name, data_dir)
    return data_sources.read_tfds_split(spec, split, subset, holdout, data_dir, tfds_dir, download, image_size)


def load_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    spec: DatasetSpec | str,
    split: str = "train",
    batch_size: int = 128,
    augment: bool | None = None,
    shuffle: bool | None = None,
    seed: int = 0,
    drop_remainder: bool = False,
    normalization: tuple | None = None,
    stream: bool = False,
    start_step: int = 0,
    pipeline: str = "auto",
    shard: tuple[int, int] | None = None,
) -> tuple[tf.data.Dataset | keras.utils.PyDataset, DatasetInfo]:
    """Batches raw images you hold in memory through the same pipelines as `load`.

    The images are raw pixels, as read from files: uint8 (n, height, width, channels) matching
    `spec.input_shape`; `spec` gives the normalisation (unless `normalization` does) and the augmentation
    (`crop_padding`, `flip`). Every other argument means what it means for `load`.

    Args:
        images: uint8 array (n, height, width, channels).
        labels: Integer class ids (n,) in 0 .. spec.num_classes - 1.
        spec: A `DatasetSpec`, or the name of a dataset in `list_datasets()` whose statistics and augmentation the
            arrays share.
        split: "train" or "test": the defaults of `augment` and `shuffle`, and `info.split`.
        batch_size, augment, shuffle, seed, drop_remainder, normalization, stream, start_step, pipeline, shard: As
            for `load`.

    Returns:
        `(dataset, info)`, with `info.source == "arrays"`.

    Raises:
        ValueError: For arrays of the wrong dtype, shape or label range, or an invalid option.

    Example:

    ```python
    images, labels = stkd_keras.idx.read_fashion_mnist_idx(directory, "train")
    stream, info = load_arrays(images[:512], labels[:512], "fashion_mnist", stream=True, pipeline="numpy")
    ```
    """
    from stkd_keras import batches, data_sources

    _check_options(split, batch_size, None, stream, start_step, shard)
    pipeline = resolve_pipeline(pipeline)
    raw = data_sources.read_arrays(images, labels, get_spec(spec) if isinstance(spec, str) else spec, split)
    options = batches.BatchOptions(batch_size, augment, shuffle, seed, drop_remainder, stream, start_step, shard)
    return batches.build_batches(raw, options, pipeline, normalization)


def describe(name: str, data_dir: str | os.PathLike | None = None, tfds_dir=None) -> dict:
    """Where a named dataset would be read from and whether it is available here, without reading it."""
    from stkd_keras import data_sources

    spec = get_spec(name)
    directory = data_sources.idx_directory(name, data_dir)
    if directory is not None:
        return {"name": name, "source": f"IDX files in {directory}", "available": True}
    if not tensorflow_available():
        return {
            "name": name,
            "source": "tensorflow-datasets, which needs TensorFlow (not importable here)",
            "available": False,
        }
    return data_sources.describe_tfds(spec, data_dir, tfds_dir)
