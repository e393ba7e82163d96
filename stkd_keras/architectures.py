"""Any Keras architecture as a student or teacher: the zoo, `keras.applications`, a `.keras` file, or a factory.

A run names its model with one string (`RunConfig.model`, `--student`, `--teacher-model`):

- a zoo name (`resnet8`, `wrn_16_2`, ... : `stkd_keras.models`);
- a `keras.applications` family member (`MobileNetV3Small`, `EfficientNetB0`, ...; `keras:NAME` always means the
  application, and is needed for the two names the zoo also has, `keras:MobileNetV2` and `keras:ResNet50`), built
  with `weights=None`, the data's input shape, the run's class count and logits out (`classifier_activation=None`);
- a `.keras` file, whose architecture and weights the run starts from (checked against the data's input shape and
  classes);
- `module:function`, a factory in your own code, imported from the working directory or `PYTHONPATH` and called as
  `function(num_classes=..., input_shape=(height, width, channels))`; it returns a `keras.Model` of logits.

Starting weights (`RunConfig.weights`, `--student-weights`) come from a file on disk: a `.weights.h5` saved by
Keras 3, or, for an application, the `.h5` files keras.applications downloads (ImageNet, with or without the top);
`imagenet` looks for that file where Keras keeps it (`~/.keras/models/`) and says what to download when it is not
there. Nothing is downloaded at run time. The classifier is always rebuilt for the run's classes.

Preprocessing: the data pipeline normalises (`(pixels / 255 - mean) / std`), so an application's own rescaling is
switched off where its constructor allows it (MobileNetV3, EfficientNetV2: `include_preprocessing=False`;
MobileNetV2 and ResNet50 have none). EfficientNet (B0-B7) always rescales and normalises inside the model: it reads
raw 0-255 pixels, and without starting weights its Normalization layer takes the dataset's mean and variance. The
rule for every model, applications, files and factories alike (`reads_raw_pixels`): a model whose layers before its
first convolution or dense layer include Rescaling or Normalization reads raw pixels, and the pipeline passes them
unnormalised; any other model reads normalised pixels. So nothing is normalised twice or not at all.

Applications train with BatchNorm momentum 0.9, the zoo's (`_bring_batchnorm_momentum_to` says why).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import sys
from pathlib import Path

from stkd_keras.config import MODEL_NAMES

APPLICATION_PREFIX = "keras:"
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class ArchitectureError(ValueError):
    """A model name, file, factory or weights file that cannot make the run's model; the message says why."""


@dataclasses.dataclass(frozen=True)
class Application:
    """A `keras.applications` constructor the command line offers, and what it needs.

    `imagenet` is the file name keras.applications gives the ImageNet weights without the top, and
    `imagenet_url` the folder it downloads them from.
    """

    name: str
    family: str
    imagenet: str
    imagenet_url: str
    min_size: int = 32

    @property
    def reads_raw_pixels(self) -> bool:
        """Whether the constructor always rescales and normalises inside the model (EfficientNet)."""
        return self.family == "EfficientNet"


_MOBILENET_V3 = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
_EFFICIENTNET_V2 = "https://storage.googleapis.com/tensorflow/keras-applications/efficientnet_v2/"
APPLICATIONS: dict[str, Application] = {
    "MobileNetV2": Application(
        "MobileNetV2",
        "MobileNetV2",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/",
    ),
    "MobileNetV3Small": Application(
        "MobileNetV3Small", "MobileNetV3", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", _MOBILENET_V3
    ),
    "MobileNetV3Large": Application(
        "MobileNetV3Large", "MobileNetV3", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5", _MOBILENET_V3
    ),
    **{
        f"EfficientNetB{i}": Application(
            f"EfficientNetB{i}",
            "EfficientNet",
            f"efficientnetb{i}_notop.h5",
            "https://storage.googleapis.com/keras-applications/",
        )
        for i in range(4)
    },
    **{
        f"EfficientNetV2B{i}": Application(
            f"EfficientNetV2B{i}", "EfficientNetV2", f"efficientnetv2-b{i}_notop.h5", _EFFICIENTNET_V2
        )
        for i in range(4)
    },
    "ResNet50": Application(
        "ResNet50",
        "ResNet",
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/resnet/",
    ),
}


def application_names() -> list[str]:
    """The applications as `--student` takes them: bare, or `keras:NAME` where the zoo has the same name."""
    return [APPLICATION_PREFIX + name if name in MODEL_NAMES else name for name in APPLICATIONS]


def kind_of(spec: str) -> str:
    """What a model string names: "zoo", "application", "file" or "factory"; `ArchitectureError` when nothing.

    Needs no Keras, so the command line checks its options before a backend starts.
    """
    if not isinstance(spec, str) or not spec:
        raise ArchitectureError(f"Expected a model name, a .keras file or module:function. Received: {spec!r}")
    if spec in MODEL_NAMES:
        return "zoo"
    if spec.removeprefix(APPLICATION_PREFIX) in APPLICATIONS:
        return "application"
    if spec.endswith(".keras"):
        return "file"
    if _FACTORY.match(spec) and not spec.startswith(APPLICATION_PREFIX):
        return "factory"
    raise ArchitectureError(
        f"Unknown model {spec!r}: expected a zoo model ({', '.join(MODEL_NAMES[:3])}, ...), a keras.applications "
        f"model ({', '.join(application_names())}), a .keras file, or module:function "
        "(`stkd-keras models` lists the names)."
    )


def check_weights_option(spec: str, weights: str | None) -> None:
    """Refuses, without Keras, a model string that names nothing and starting weights the model cannot take."""
    kind_of(spec)
    if weights is None:
        return
    if kind_of(spec) == "file":
        raise ArchitectureError(f"{spec} brings its own weights; starting weights {weights} cannot be added to it.")
    if weights == "imagenet":
        if kind_of(spec) != "application":
            raise ArchitectureError(f"ImageNet weights exist only for keras.applications models, not for {spec!r}.")
        return
    if not weights.endswith(".h5"):
        raise ArchitectureError(
            f"Expected starting weights in a .weights.h5 (Keras 3) or .h5 file, or `imagenet`. Received: {weights}"
        )
    if not Path(weights).is_file():
        what = "is not a file" if Path(weights).exists() else "does not exist"
        raise ArchitectureError(f"Starting weights file {weights} {what}.")


def build_model(
    spec: str,
    num_classes: int,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    normalization: tuple | None = None,
):
    """The model `spec` names, for `num_classes` classes and inputs `input_shape`, logits out.

    `input_shape` is the data's (height, width, channels); an application with starting weights needs 3 channels
    and gets them (the data repeats a gray channel), and a `.keras` file keeps its own channels: read the channels
    the model takes from `model.input_shape`. `normalization` is the dataset's (mean, std) per channel, given to an
    in-model Normalization layer that was never adapted (EfficientNet without starting weights).

    Raises:
        ArchitectureError: One sentence: an unknown name, an input smaller than the model accepts, a file or factory
            that does not fit the data, starting weights that are missing or fit no layer.
    """
    check_weights_option(spec, weights)
    kind = kind_of(spec)
    height, width, channels = (int(size) for size in input_shape)
    if kind == "zoo":
        from stkd_keras.models import get_model

        model = get_model(spec, num_classes, (height, width, channels))
    elif kind == "application":
        application = APPLICATIONS[spec.removeprefix(APPLICATION_PREFIX)]
        model = _build_application(application, num_classes, (height, width, 3 if weights else channels), weights)
        weights = None  # loaded by _build_application
    elif kind == "file":
        model = _load_file(spec, num_classes, (height, width, channels))
    else:
        model = _call_factory(spec, num_classes, (height, width, channels))
    if weights is not None:
        load_starting_weights(model, weights)
    _check_logits(model, spec)
    if normalization is not None:
        _adapt_normalization(model, normalization)
    _finalize_statistics(model)
    return model


def _finalize_statistics(model) -> None:
    """Makes every Normalization layer use the statistics its variables now hold.

    The layer reads them into tensors when it is built or loads a file (`finalize_state`), not when its variables
    are assigned, as copying weights and `_adapt_normalization` do.
    """
    pending = list(model.layers)
    while pending:
        layer = pending.pop()
        pending.extend(getattr(layer, "layers", []))
        if hasattr(layer, "finalize_state") and layer.built:
            layer.finalize_state()


def _build_application(application: Application, num_classes: int, input_shape: tuple, weights: str | None):
    import inspect

    import keras

    height, width, _ = input_shape
    if min(height, width) < application.min_size:
        raise ArchitectureError(
            f"{application.name} needs inputs of at least {application.min_size}x{application.min_size} pixels, but "
            f"the data's images are {height}x{width}: set the run's image size (--image-size) to "
            f"{application.min_size} or more."
        )
    constructor = getattr(keras.applications, application.name)
    options = (
        {"include_preprocessing": False} if "include_preprocessing" in inspect.signature(constructor).parameters else {}
    )

    def make(**top):
        return constructor(input_shape=input_shape, weights=None, classifier_activation=None, **options, **top)

    model = make(include_top=True, classes=num_classes)
    _bring_batchnorm_momentum_to(model, 0.9)
    if weights is not None:
        path = imagenet_file(application) if weights == "imagenet" else weights
        if path.endswith(".weights.h5"):
            load_starting_weights(model, path)
        else:
            _load_application_h5(model, make, path)
    return model


def _bring_batchnorm_momentum_to(model, momentum: float) -> None:
    """Sets every BatchNormalization layer's momentum, before any training.

    keras.applications build MobileNetV3 with momentum 0.999 and EfficientNet with 0.99: their moving statistics,
    which evaluation uses, need thousands of steps to leave their initial values, so a student trained for a few
    hundred steps is at chance in evaluation while its training accuracy rises (seen: MobileNetV3Small, 186 steps,
    9% with the moving statistics against 35% with the batch's). 0.9 is PyTorch's and the zoo's momentum.
    """
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def keras_home() -> Path:
    """Where Keras keeps what it downloads (`KERAS_HOME`, else `~/.keras`), as `keras.utils.get_file` decides."""
    return Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser())


def imagenet_file(application: Application) -> str:
    """The ImageNet weights of `application` in Keras's cache; one sentence naming what to download when absent."""
    path = keras_home() / "models" / application.imagenet
    if not path.is_file():
        raise ArchitectureError(
            f"ImageNet weights for {application.name} are not on this machine, and nothing is downloaded at run time: "
            f"download {application.imagenet_url}{application.imagenet} and put it at {path} (or pass its path as "
            "the starting weights)."
        )
    return str(path)


def _load_application_h5(model, make, path: str) -> None:
    """Loads a keras.applications `.h5` file (ImageNet, with or without the top) into `model`, but its classifier.

    Those files are loaded the way keras.applications loads them, layer by layer in order, into the same
    constructor's model without the top (or with the 1,000-class top), then copied into `model` by layer name.
    """
    before = _kernels(model)
    errors = []
    for top in ({"include_top": False}, {"include_top": True, "classes": 1000}):
        source = make(**top)
        try:
            source.load_weights(path)
        except Exception as error:  # Keras raises ValueError or h5py's errors for a file of another model.
            errors.append(f"{type(error).__name__}: {error}")
            continue
        _copy_by_name(source, model)
        return _check_coverage(model, before, path)
    raise ArchitectureError(f"Starting weights {path} do not fit {model.name}: {errors[-1]}")


def _copy_by_name(source, target) -> None:
    """Copies every layer's weights from `source` to the layer of `target` with its name and shapes."""
    for layer in source.layers:
        if not layer.weights:
            continue
        try:
            twin = target.get_layer(layer.name)
        except ValueError:
            continue
        values = layer.get_weights()
        if [tuple(w.shape) for w in twin.weights] == [v.shape for v in values]:
            twin.set_weights(values)


def load_starting_weights(model, path: str) -> None:
    """Loads a `.weights.h5` (Keras 3) or `.h5` (by layer name) file into `model`, all of it but the classifier.

    Raises:
        ArchitectureError: For a file that cannot be read, or one saved from another architecture.
    """
    import warnings

    before = _kernels(model)
    options = {"by_name": True} if not path.endswith(".weights.h5") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns per skipped layer; `_check_coverage` says what matters
        try:
            model.load_weights(path, skip_mismatch=True, **options)
        except Exception as error:  # a corrupt or foreign file: Keras and h5py raise many types
            raise ArchitectureError(f"Cannot read starting weights {path}: {type(error).__name__}: {error}") from None
    _check_coverage(model, before, path)


def _kernels(model) -> dict:
    """Each layer's first kernel (a trainable weight of two or more dimensions), by layer name."""
    import keras

    kernels = {}
    for layer in model.layers:
        kernel = next((w for w in layer.trainable_weights if len(w.shape) >= 2), None)
        if kernel is not None:
            kernels[layer.name] = keras.ops.convert_to_numpy(kernel)
    return kernels


def _check_coverage(model, before: dict, path: str) -> None:
    """Refuses starting weights that left more than the head's two layers with kernels as they were initialised.

    Keras 3 matches a `.weights.h5` file's layers by class and order, so a file of another architecture fills the
    few layers whose shapes happen to agree: counting what changed tells the two apart.
    """
    import numpy as np

    after = _kernels(model)
    kept = [name for name, kernel in before.items() if np.array_equal(kernel, after[name])]
    if len(kept) > 2:
        raise ArchitectureError(
            f"Starting weights {path} fit only {len(before) - len(kept)} of the {len(before)} layers of {model.name} "
            "with kernels (all but the classifier must fit): they were saved from another architecture."
        )


def _load_file(path: str, num_classes: int, input_shape: tuple):
    from stkd_keras.evaluation import load_model

    model = load_model(path, role="student")
    height, width, _ = input_shape
    wanted_size = tuple(model.input_shape[1:3])
    classes = model.output_shape[-1]
    if wanted_size != (height, width) or classes != num_classes or model.input_shape[-1] not in (input_shape[-1], 3):
        raise ArchitectureError(
            f"{path} takes {_shape(model.input_shape[1:])} images and predicts {classes} classes, but the data has "
            f"{_shape(input_shape)} images and {num_classes} classes"
            + (f": set the image size to {wanted_size[0]}." if classes == num_classes else ".")
        )
    return model


def import_factory(spec: str):
    """The object `module:function` names, its module imported from the working directory or `PYTHONPATH`."""
    module_name, function_name = spec.split(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # the working directory, as `python -m` would search it
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise ArchitectureError(
            f"Cannot import {module_name!r} for model {spec} (searched the working directory and PYTHONPATH): "
            f"{type(error).__name__}: {error}"
        ) from None
    return getattr(module, function_name, None)


def _call_factory(spec: str, num_classes: int, input_shape: tuple):
    import keras

    factory = import_factory(spec)
    module_name, function_name = spec.split(":")
    if not callable(factory):
        raise ArchitectureError(f"Module {module_name!r} has no function {function_name!r} (model {spec}).")
    try:
        model = factory(num_classes=num_classes, input_shape=tuple(input_shape))
    except Exception as error:
        raise ArchitectureError(
            f"{spec}(num_classes={num_classes}, input_shape={tuple(input_shape)}) failed: "
            f"{type(error).__name__}: {error}"
        ) from None
    if not isinstance(model, keras.Model):
        raise ArchitectureError(f"{spec} returned a {type(model).__name__}, not a keras.Model.")
    if tuple(model.input_shape[1:]) != tuple(input_shape) or model.output_shape[-1] != num_classes:
        raise ArchitectureError(
            f"{spec} built a model for {_shape(model.input_shape[1:])} images and {model.output_shape[-1]} classes, "
            f"but it was asked for {_shape(input_shape)} images and {num_classes} classes."
        )
    return model


def _shape(shape) -> str:
    return "x".join(str(size) for size in shape)


def _check_logits(model, spec: str) -> None:
    """Refuses a model that ends in a softmax: distillation needs its logits."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax) or getattr(last, "activation", None) is keras.activations.softmax:
        raise ArchitectureError(
            f"Model {spec} ends in a softmax ({last.name}); distillation needs logits: build it without the final "
            "softmax (for keras.applications, classifier_activation=None)."
        )


def _input_layers(model) -> list:
    """The layers between the input and the first convolution or dense layer, in order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            break
        found.append(layer)
    return found


def reads_raw_pixels(model) -> bool:
    """Whether `model` rescales or normalises its input itself (a Rescaling or Normalization layer before its first
    convolution or dense layer): then it reads raw 0-255 pixels."""
    import keras

    return any(
        isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization)) for layer in _input_layers(model)
    )


def raw_pixel_normalization(channels: int) -> tuple[list[float], list[float]]:
    """The (mean, std) under which the pipeline's `(pixels / 255 - mean) / std` passes raw 0-255 pixels."""
    return [0.0] * channels, [1 / 255] * channels


def _adapt_normalization(model, normalization: tuple) -> None:
    """Gives an in-model Normalization layer that was never adapted the dataset's statistics (on the 0-1 scale)."""
    import keras
    import numpy as np

    mean, std = (np.asarray(values, "float32") for values in normalization)
    for layer in _input_layers(model):
        if not isinstance(layer, keras.layers.Normalization) or layer.input_mean is not None:
            continue
        state = {variable.path.rsplit("/", 1)[-1]: variable for variable in layer.weights}
        if not set(state) >= {"mean", "variance"} or state["mean"].shape[-1] != mean.shape[-1]:
            continue
        values = {name: keras.ops.convert_to_numpy(state[name]) for name in ("mean", "variance")}
        if np.all(values["mean"] == 0) and np.all(values["variance"] == 1):  # as built: never adapted nor loaded
            state["mean"].assign(np.reshape(mean, state["mean"].shape))
            state["variance"].assign(np.reshape(std**2, state["variance"].shape))
