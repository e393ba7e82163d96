"""Quantization-aware training and pruning of a Keras 3 student through tensorflow-model-optimization.

Contract: this module runs only as its own process, given one
`stkd_keras.export.plan.FineTuning` as JSON (what `stkd-keras export` does),
or the same fields as options:

    python -m stkd_keras.export.tfmot_bridge --spec FINE_TUNING.json
    python -m stkd_keras.export.tfmot_bridge --model student.keras --dataset NAME \\
        --mode qat|prune --output OUT.tflite --report OUT.json [options]

and nothing else in stkd-keras imports it. tensorflow-model-optimization
(tfmot 0.8.1) works only with legacy Keras (`tf_keras`, Keras 2): importing it
sets `TF_USE_LEGACY_KERAS=1` for the whole process, and `quantize_model`
rejects Keras 3 models. Keeping it in a subprocess leaves every other process
on Keras 3 and lets a tfmot failure end with one line on stderr, which the
caller (`stkd_keras.export.core.run_tfmot_bridge`) shows to the user.

What a run does:
1. Loads the Keras 3 student (and teacher) and rebuilds each as a `tf_keras`
   functional model, layer by layer from the Keras 3 functional graph, with
   the same hyperparameters and weights; the rebuilt model must reproduce the
   Keras 3 logits on real evaluation images to 1e-5 (max abs difference),
   otherwise the run stops.
2. `--mode qat`: `tfmot.quantization.keras.quantize_model`. The weightless
   channel layers of the ShuffleNets (ChannelShuffle, ChannelSplit) only move
   values, so they get a no-op quantize config: their outputs keep the
   quantization of their inputs.
   `--mode prune`: `prune_low_magnitude` on every Conv2D, DepthwiseConv2D and
   Dense layer, PolynomialDecay (power 3) from 0 to `--sparsity`, reaching the
   target at 80% of the fine-tuning steps so that the last 20% recover with the
   final mask; then `strip_pruning`.
3. Fine-tunes with the distillation method the student was trained with
   (`--method` and `--hyperparameters`, any registered method; the export
   command passes the run's own), with the Distiller's own step loss
   (`stkd_keras.methods.step_loss`), its epochs counted on from
   `--initial-epoch` (the run's epochs, so a warm-up such as DKD's is over). For STKD
   (Zhao et al. 2021, arXiv 2103.10047) each batch is mixed, the teacher sees
   the same mixed images, and the student learns the STKD loss. A method
   with a teacher needs `--teacher`; `ce` fine-tunes on plain cross-entropy.
4. Converts to full-integer int8 TFLite (int8 input and output) with a
   representative set of training images, writes it atomically, runs it in
   `ai_edge_litert` and writes a JSON report (also atomically): mode, epochs,
   steps, teacher (path or null), method, loss and hyperparameters, parity_max_abs_diff (student,
   teacher), keras3_top1_accuracy_before, loss_per_epoch,
   float_top1_accuracy (the fine-tuned tf_keras model), pruning (schedule,
   per_layer_sparsity, overall_sparsity, prunable_weights; null for QAT),
   int8_top1_accuracy, int8_float_top1_agreement, int8_size_bytes,
   int8_input_dtype, int8_output_dtype, int8_input_quantization, timings.

Layers it translates: InputLayer, Conv2D, DepthwiseConv2D, BatchNormalization,
ReLU, Activation, Add, Concatenate, ZeroPadding2D, MaxPooling2D,
AveragePooling2D, GlobalAveragePooling2D, Flatten, Dropout, Dense and
stkd-keras's ChannelShuffle / ChannelSplit. The rebuilt model runs in float32
whatever the saved dtype policy (QAT in float16 is not meaningful), and
weight regularizers are not carried over (the fine-tuning loss is the method's).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import click
import numpy as np

from stkd_keras.files import atomic_write

PARITY_TOLERANCE = 1e-5
# The share of fine-tuning steps over which the pruning schedule ramps up to the target sparsity.
PRUNING_RAMP_FRACTION = 0.8


class BridgeError(RuntimeError):
    """A model the bridge cannot rebuild, quantize or prune, or a rebuilt model that does not match; one sentence for the user."""


# --- tf_keras equivalents of the zoo's custom layers ---------------------------------------------


def custom_layer_classes(tf_keras):
    """tf_keras versions of `stkd_keras.models.layers.ChannelShuffle` / `ChannelSplit`: their functions, their config."""
    import tensorflow as tf

    from stkd_keras.models.layers import shuffle_channels, split_channels

    class ChannelShuffle(tf_keras.layers.Layer):
        def __init__(self, groups, **kwargs):
            super().__init__(**kwargs)
            self.groups = int(groups)

        def call(self, inputs):
            return shuffle_channels(inputs, self.groups)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "groups": self.groups}

    class ChannelSplit(tf_keras.layers.Layer):
        def __init__(self, num_splits, **kwargs):
            super().__init__(**kwargs)
            self.num_splits = int(num_splits)

        def call(self, inputs):
            return split_channels(inputs, self.num_splits)

        def compute_output_shape(self, input_shape):
            input_shape = tf.TensorShape(input_shape)
            part = input_shape[-1] // self.num_splits
            return [tf.TensorShape([*input_shape[:-1], part]) for _ in range(self.num_splits)]

        def get_config(self):
            return {**super().get_config(), "num_splits": self.num_splits}

    return ChannelShuffle, ChannelSplit


# --- Keras 3 -> tf_keras ---------------------------------------------------------------------------


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _layer_factories(tf_keras, custom_layers):
    """Class name -> function(config) building the tf_keras layer with the same hyperparameters."""
    L = tf_keras.layers
    ChannelShuffle, ChannelSplit = custom_layers

    def conv(config):
        return L.Conv2D(
            config["filters"],
            _tuple(config["kernel_size"]),
            strides=_tuple(config["strides"]),
            padding=config["padding"],
            data_format=config["data_format"],
            dilation_rate=_tuple(config["dilation_rate"]),
            groups=config.get("groups", 1),
            activation=config["activation"],
            use_bias=config["use_bias"],
            name=config["name"],
        )

    def depthwise(config):
        return L.DepthwiseConv2D(
            _tuple(config["kernel_size"]),
            strides=_tuple(config["strides"]),
            padding=config["padding"],
            depth_multiplier=config["depth_multiplier"],
            data_format=config["data_format"],
            dilation_rate=_tuple(config["dilation_rate"]),
            activation=config["activation"],
            use_bias=config["use_bias"],
            name=config["name"],
        )

    def batch_norm(config):
        if config.get("renorm") or config.get("synchronized"):
            raise BridgeError(
                f"BatchNormalization layer {config['name']!r} uses renorm or synchronized statistics, which the "
                "tf_keras bridge does not translate."
            )
        return L.BatchNormalization(
            axis=config["axis"],
            momentum=config["momentum"],
            epsilon=config["epsilon"],
            center=config["center"],
            scale=config["scale"],
            name=config["name"],
        )

    def pool(cls):
        return lambda config: cls(
            _tuple(config["pool_size"]),
            strides=_tuple(config["strides"]),
            padding=config["padding"],
            data_format=config["data_format"],
            name=config["name"],
        )

    return {
        "Conv2D": conv,
        "DepthwiseConv2D": depthwise,
        "BatchNormalization": batch_norm,
        "ReLU": lambda c: L.ReLU(
            max_value=c["max_value"], negative_slope=c["negative_slope"], threshold=c["threshold"], name=c["name"]
        ),
        "Activation": lambda c: L.Activation(c["activation"], name=c["name"]),
        "Add": lambda c: L.Add(name=c["name"]),
        "Concatenate": lambda c: L.Concatenate(axis=c["axis"], name=c["name"]),
        "ZeroPadding2D": lambda c: L.ZeroPadding2D(_tuple(c["padding"]), data_format=c["data_format"], name=c["name"]),
        "MaxPooling2D": pool(L.MaxPooling2D),
        "AveragePooling2D": pool(L.AveragePooling2D),
        "GlobalAveragePooling2D": lambda c: L.GlobalAveragePooling2D(
            data_format=c["data_format"], keepdims=c["keepdims"], name=c["name"]
        ),
        "Flatten": lambda c: L.Flatten(data_format=c["data_format"], name=c["name"]),
        "Dropout": lambda c: L.Dropout(c["rate"], noise_shape=c.get("noise_shape"), seed=c.get("seed"), name=c["name"]),
        "Dense": lambda c: L.Dense(c["units"], activation=c["activation"], use_bias=c["use_bias"], name=c["name"]),
        "ChannelShuffle": lambda c: ChannelShuffle(c["groups"], name=c["name"]),
        "ChannelSplit": lambda c: ChannelSplit(c["num_splits"], name=c["name"]),
    }


def _history_refs(structure):
    """The (layer name, node index, tensor index) of every Keras tensor in a serialized call argument."""
    if isinstance(structure, dict) and structure.get("class_name") == "__keras_tensor__":
        return [tuple(structure["config"]["keras_history"])]
    if isinstance(structure, (list, tuple)):
        return [ref for item in structure for ref in _history_refs(item)]
    if isinstance(structure, dict):
        return [ref for item in structure.values() for ref in _history_refs(item)]
    return []


def _replace_tensors(structure, tensors):
    if isinstance(structure, dict) and structure.get("class_name") == "__keras_tensor__":
        layer_name, node_index, tensor_index = structure["config"]["keras_history"]
        return tensors[(layer_name, node_index)][tensor_index]
    if isinstance(structure, (list, tuple)):
        return [_replace_tensors(item, tensors) for item in structure]
    if isinstance(structure, dict):
        return {key: _replace_tensors(value, tensors) for key, value in structure.items()}
    return structure


def _endpoints(spec) -> list:
    """`input_layers` / `output_layers` of a functional config: one [name, node, tensor] or a list of them."""
    return [spec] if spec and isinstance(spec[0], str) else list(spec)


def to_tf_keras(model, tf_keras, custom_layers: tuple):
    """Rebuilds a Keras 3 functional model as a tf_keras functional model with the same architecture and weights.

    Args:
        model: A Keras 3 functional model (layers and their inbound nodes are read from `model.get_config()`).
        tf_keras: The `tf_keras` module.
        custom_layers: The tf_keras (ChannelShuffle, ChannelSplit) classes.

    Returns:
        The tf_keras model, named like `model`.

    Raises:
        BridgeError: For a layer class the bridge does not translate (naming the layer and its class), a model
            that is not functional, or weights that do not fit.
    """
    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    if not config or "layers" not in config:
        raise BridgeError(
            f"Model {model.name!r} ({type(model).__name__}) is not a functional Keras model; the tf_keras bridge "
            "translates functional models only."
        )
    factories = _layer_factories(tf_keras, custom_layers)
    keras3_layers = {layer.name: layer for layer in model.layers}
    for layer_config in config["layers"]:
        class_name = layer_config["class_name"]
        if class_name != "InputLayer" and class_name not in factories:
            raise BridgeError(
                f"Layer {layer_config['name']!r} of class {class_name} is not supported by the tf_keras bridge "
                f"(supported: {', '.join(sorted(factories))})."
            )
    tensors = {}  # (layer name, node index) -> list of output tensors
    built = {}
    pending = list(config["layers"])
    # Functional configs list layers in topological order; the loop also tolerates any order.
    while pending:
        progress = False
        for layer_config in list(pending):
            name = layer_config["name"]
            class_name = layer_config["class_name"]
            if class_name == "InputLayer":
                input_config = layer_config["config"]
                shape = input_config.get("batch_shape") or input_config.get("batch_input_shape")
                tensors[(name, 0)] = [tf_keras.Input(batch_shape=tuple(shape), dtype="float32", name=name)]
                pending.remove(layer_config)
                progress = True
                continue
            nodes = layer_config["inbound_nodes"]
            if not all(ref[:2] in tensors for node in nodes for ref in map(tuple, _history_refs(node))):
                continue
            layer = built.get(name) or factories[class_name](keras3_layers[name].get_config())
            built[name] = layer
            for node_index, node in enumerate(nodes):
                args = _replace_tensors(node.get("args", []), tensors)
                kwargs = {k: v for k, v in _replace_tensors(node.get("kwargs", {}), tensors).items() if v is not None}
                kwargs.pop("mask", None)
                outputs = layer(*args, **kwargs)
                tensors[(name, node_index)] = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
            pending.remove(layer_config)
            progress = True
        if not progress:
            raise BridgeError(
                f"Model {model.name!r} has layers whose inputs never become available: {[c['name'] for c in pending]}."
            )
    inputs = [tensors[(name, node)][index] for name, node, index in _endpoints(config["input_layers"])]
    outputs = [tensors[(name, node)][index] for name, node, index in _endpoints(config["output_layers"])]
    if len(outputs) != 1:
        raise BridgeError(f"Model {model.name!r} has {len(outputs)} outputs; the bridge expects one (the logits).")
    rebuilt = tf_keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0], name=model.name)
    for name, layer in built.items():
        weights = keras3_layers[name].get_weights()
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in weights] != expected:
            raise BridgeError(
                f"Layer {name!r} ({type(layer).__name__}): Keras 3 weights {[tuple(w.shape) for w in weights]} "
                f"do not fit the tf_keras layer's {expected}."
            )
        layer.set_weights(weights)
    return rebuilt


def predict(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a Keras 3 or tf_keras model in inference mode, as float32 numpy."""
    return np.concatenate(
        [
            np.asarray(model(images[start : start + batch_size], training=False), dtype=np.float32)
            for start in range(0, len(images), batch_size)
        ]
    )


def check_parity(keras3_model, tf_keras_model, images: np.ndarray, role: str) -> float:
    """Max abs difference of the logits of both models on `images`; raises `BridgeError` above `PARITY_TOLERANCE`."""
    difference = float(np.max(np.abs(predict(keras3_model, images) - predict(tf_keras_model, images))))
    if not difference <= PARITY_TOLERANCE:
        raise BridgeError(
            f"The tf_keras rebuild of the {role} differs from the Keras 3 model by {difference:.2e} in its logits "
            f"(max abs, {len(images)} evaluation images), beyond the {PARITY_TOLERANCE:.0e} bound."
        )
    return difference


# --- tfmot ---------------------------------------------------------------------------------------------


def quantize(model, tf_keras, tfmot, custom_layers: tuple):
    """`quantize_model`, with a no-op quantize config for the weightless channel layers.

    Raises:
        BridgeError: Naming the layer tfmot's default 8-bit scheme cannot quantize. tfmot decides after its
            graph transforms (a BatchNormalization that is a convolution's sole consumer is folded into it; any
            other BatchNormalization, as in pre-activation WRN blocks or after ShuffleV1's grouped-conv
            concatenation, is rejected), so there is no pre-check.
    """
    quantization = tfmot.quantization.keras

    class NoOpQuantizeConfig(quantization.QuantizeConfig):
        """For layers that only move values (reshape, transpose, split): nothing to quantize, ranges pass through."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    def annotate(layer):
        if isinstance(layer, custom_layers):
            return quantization.quantize_annotate_layer(layer, quantize_config=NoOpQuantizeConfig())
        return layer

    custom_objects = {cls.__name__: cls for cls in custom_layers} | {"NoOpQuantizeConfig": NoOpQuantizeConfig}
    try:
        with quantization.quantize_scope(custom_objects):
            # The clone reuses the (already weighted) layers; quantize_annotate_model leaves annotated ones as they are.
            annotated = tf_keras.models.clone_model(model, clone_function=annotate)
            # quantize_model(m) is quantize_apply(quantize_annotate_model(m)); split to keep the custom annotations.
            return quantization.quantize_apply(quantization.quantize_annotate_model(annotated))
    except (ValueError, RuntimeError, TypeError) as error:
        # tfmot: "Layer NAME:<class 'MODULE.CLASS'> is not supported. You can quantize this layer by passing ..."
        unsupported = re.match(r"Layer (\S+):<class '(?:[\w.]+\.)?(\w+)'> is not supported", str(error))
        if unsupported:
            name, class_name = unsupported.groups()
            hint = (
                " (tfmot folds a BatchNormalization into the convolution before it, and only when it is that "
                "convolution's sole consumer)"
                if class_name == "BatchNormalization"
                else ""
            )
            raise BridgeError(
                f"tfmot's quantize_model cannot quantize layer {name!r} of class {class_name}{hint}."
            ) from None
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BridgeError(f"tfmot's quantize_model failed on model {model.name!r}: {first_line}") from None


PRUNABLE_CLASSES = ("Conv2D", "DepthwiseConv2D", "Dense")


def _prunable_kernel(layer):
    """The weight that magnitude pruning zeroes in a Conv2D / DepthwiseConv2D / Dense layer."""
    return layer.depthwise_kernel if type(layer).__name__ == "DepthwiseConv2D" else layer.kernel


def pruning_schedule(total_steps: int, sparsity: float) -> dict:
    """PolynomialDecay parameters ramping from 0 to `sparsity`, the target reached on a mask-update step.

    The mask is updated about 20 times over the ramp (every step for short runs); the target is reached at
    `PRUNING_RAMP_FRACTION` of the steps, rounded down to a mask-update step, and kept to the end.
    """
    frequency = max(1, int(total_steps * PRUNING_RAMP_FRACTION) // 20)
    end_step = max(frequency, (int(total_steps * PRUNING_RAMP_FRACTION) // frequency) * frequency)
    return {
        "initial_sparsity": 0.0,
        "final_sparsity": float(sparsity),
        "begin_step": 0,
        "end_step": end_step,
        "power": 3,
        "frequency": frequency,
    }


def prune(model, tf_keras, tfmot, custom_layers: tuple, schedule: dict):
    """Wraps every Conv2D, DepthwiseConv2D and Dense layer in `prune_low_magnitude` with a PolynomialDecay schedule."""
    sparsity = tfmot.sparsity.keras
    polynomial = sparsity.PolynomialDecay(**schedule)

    def wrap(layer):
        if type(layer).__name__ in PRUNABLE_CLASSES:
            return sparsity.prune_low_magnitude(layer, pruning_schedule=polynomial)
        return layer

    # The clone reuses the original, already weighted layers (wrapped or not): no weights to copy.
    return tf_keras.models.clone_model(model, clone_function=wrap)


def measure_sparsity(model) -> tuple[dict, float, int]:
    """Fraction of exact zeros in each prunable kernel of a stripped model, overall, and the kernels' size."""
    per_layer, zeros, total = {}, 0, 0
    for layer in model.layers:
        if type(layer).__name__ in PRUNABLE_CLASSES:
            kernel = np.asarray(_prunable_kernel(layer).numpy())
            per_layer[layer.name] = float(np.mean(kernel == 0))
            zeros += int(np.sum(kernel == 0))
            total += kernel.size
    return per_layer, (zeros / total if total else 0.0), total


# --- Fine-tuning ------------------------------------------------------------------------------------------


def batch_loss(method, hyperparameters, images, labels, student, teacher, seed_generator, epoch, step):
    """The fine-tuning's loss on one batch: the Distiller's own (`stkd_keras.methods.step_loss`), regularisation included."""
    from stkd_keras import methods

    return methods.step_loss(
        method, hyperparameters, images, labels, student, teacher, seed_generator, epoch, step
    ).total


def fine_tune(
    student,
    teacher,
    dataset,
    epochs: int,
    learning_rate: float,
    method: str,
    hyperparameters: dict,
    seed: int,
    on_epoch_end=None,
    steps_per_epoch: int | None = None,
    log=None,
    initial_epoch: int = 0,
) -> list[float]:
    """Trains `student` (tf_keras) for `epochs` on `dataset` with a registered distillation method; returns the mean loss per epoch.

    The step's loss is the Distiller's (`batch_loss`): e.g. for STKD, per
    batch, x_mix and y_mix from one mixup draw, z_t = teacher(x_mix) without
    gradient, and the STKD loss on student(x_mix). The fine-tuning continues a
    finished run, so its epochs count on from `initial_epoch` (the run's
    epochs): a method's warm-up (DKD's) is then over, as at the run's end.
    With `log`, progress goes there: an estimate of the whole fine-tuning's
    time once a few steps are measured, then about ten lines per epoch
    (epoch, step, mean loss, time left).
    """
    import keras
    import tensorflow as tf
    import tf_keras

    from stkd_keras import methods

    unit = methods.get_method(method)
    values = unit.make_hyperparameters(**hyperparameters)
    optimizer = tf_keras.optimizers.Adam(learning_rate)
    seed_generator = keras.random.SeedGenerator(seed)
    # Variables, as in the Distiller: the step function reads them without being traced again each epoch.
    epoch_variable = tf.Variable(initial_epoch, dtype=tf.int32, trainable=False)
    step_variable = tf.Variable(initial_epoch * (steps_per_epoch or 0), dtype=tf.int32, trainable=False)

    @tf.function(reduce_retracing=True)
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss = batch_loss(
                unit, values, images, labels, student, teacher, seed_generator, epoch_variable, step_variable
            )
        gradients = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(gradients, student.trainable_variables))
        step_variable.assign_add(1)
        return loss

    history = []
    total = epochs * steps_per_epoch if steps_per_epoch else None
    every = max(1, (steps_per_epoch or 100) // 10)
    # Timed from the fourth step: the first ones trace and compile the step function.
    timed_from, clock, done = 3, None, 0
    for epoch in range(epochs):
        epoch_variable.assign(initial_epoch + epoch)
        losses = []
        for images, labels in dataset:
            losses.append(float(train_step(images, labels)))
            done += 1
            if done == timed_from:
                clock = time.perf_counter()
            if log is None or done <= timed_from or not (len(losses) % every == 0 or done == timed_from + 20):
                continue
            seconds_per_step = (time.perf_counter() - clock) / max(1, done - timed_from)
            left = f", about {_duration(seconds_per_step * (total - done))} left" if total else ""
            where = f"step {len(losses)}/{steps_per_epoch}" if steps_per_epoch else f"step {len(losses)}"
            log(f"  epoch {epoch + 1}/{epochs}, {where}: loss {np.mean(losses[-every:]):.4f}{left}")
        history.append(float(np.mean(losses)))
        if log is not None:
            log(f"  epoch {epoch + 1}/{epochs} done: mean loss {history[-1]:.4f}")
        if on_epoch_end is not None:
            on_epoch_end()
    return history


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# --- TFLite ---------------------------------------------------------------------------------------------


def convert_int8(model, representative: np.ndarray, output: Path) -> None:
    """Full-integer int8 TFLite of a tf_keras model, with the export stage's int8 settings (`core.int8_converter_options`), written atomically."""
    import tensorflow as tf

    from stkd_keras.export.core import int8_converter_options

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    for name, value in int8_converter_options(representative).items():
        if name == "target_spec":
            for attribute, setting in value.items():
                setattr(converter.target_spec, attribute, setting)
        else:
            setattr(converter, name, value)
    try:
        flatbuffer = converter.convert()
    except Exception as error:  # The converter raises ConverterError and others, with long MLIR dumps.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BridgeError(f"The int8 TFLite conversion failed: {first_line}") from None
    write_atomically(output, flatbuffer)


def write_atomically(path: Path, content: bytes) -> None:
    """Writes `content` under a temporary name in the same folder, then renames it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: temporary.write_bytes(content))


def evaluate_tflite(path: Path, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> dict:
    """Top-1 accuracy of a .tflite file in ai_edge_litert, through the export stage's own runner (`TFLiteRunner`)."""
    from stkd_keras.export.runtime import TFLiteRunner

    runner = TFLiteRunner(path)
    predictions = runner.predict(images, batch_size).argmax(axis=-1)
    scale, zero_point = runner.input_detail["quantization"]
    return {
        "predictions": predictions,
        "top1_accuracy": float(np.mean(predictions == labels)),
        "input_dtype": runner.input_dtype,
        "output_dtype": runner.output_dtype,
        "input_quantization": {"scale": float(scale), "zero_point": int(zero_point)},
    }


# --- Data ----------------------------------------------------------------------------------------------


def _as_arrays(dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels)


def _parse_floats(value: str | None, option: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"Expected comma-separated numbers. Received: {value!r}", param_hint=option) from None


# --- The command ----------------------------------------------------------------------------------------


def run(spec, log=None) -> dict:
    """Does one bridge run (`spec`: a `stkd_keras.export.plan.FineTuning`) and returns the report it writes."""
    started = time.perf_counter()
    timings = {}
    from stkd_keras import methods

    unit = methods.get_method(spec.method or ("stkd" if spec.teacher else "ce"))
    hyperparameters = unit.make_hyperparameters(**spec.hyperparameters).to_dict()  # refuses bad ones before any work
    methods.check_teacher(unit, spec.teacher or None, "--teacher")  # a ValueError: one line from main()
    import keras
    import tensorflow_model_optimization as tfmot  # sets TF_USE_LEGACY_KERAS=1 for this process
    import tf_keras

    import stkd_keras.models  # noqa: F401  (registers ChannelShuffle / ChannelSplit for loading; `import stkd_keras` alone is lazy)
    from stkd_keras import data as data_lib

    tf_keras.utils.set_random_seed(spec.seed)
    custom_layers = custom_layer_classes(tf_keras)

    def load(path, role):
        try:
            model = keras.saving.load_model(path, compile=False)
        except Exception as error:
            raise BridgeError(
                f"Cannot load the {role} {path}: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
            ) from None
        return model, to_tf_keras(model, tf_keras, custom_layers)

    student_keras3, student = load(spec.model, "student")
    teacher_keras3, teacher = load(spec.teacher, "teacher") if spec.teacher else (None, None)
    timings["rebuild_s"] = time.perf_counter() - started

    input_shape = tuple(student_keras3.input_shape[1:])
    normalization = (spec.mean, spec.std) if spec.mean is not None else None
    common = {
        "data_dir": spec.data_dir,
        "normalization": normalization,
        "image_size": input_shape[:2],
        "seed": spec.seed,
    }
    train_dataset, train_info = data_lib.load(
        spec.dataset, "train", spec.batch_size, augment=True, shuffle=True, subset=spec.train_subset, **common
    )
    eval_dataset, _ = data_lib.load(
        spec.dataset, "test", 256, augment=False, shuffle=False, subset=spec.eval_subset, **common
    )
    representative_dataset, _ = data_lib.load(
        spec.dataset, "train", 256, augment=False, shuffle=False, subset=spec.representative, **common
    )
    eval_images, eval_labels = _as_arrays(eval_dataset)
    representative, _ = _as_arrays(representative_dataset)
    if tuple(eval_images.shape[1:]) != input_shape:
        raise BridgeError(
            f"The {spec.dataset} images have shape {eval_images.shape[1:]}, the student expects {input_shape}."
        )
    num_classes = int(student.output_shape[-1])
    if num_classes != train_info.num_classes:
        raise BridgeError(
            f"The student has {num_classes} outputs, {spec.dataset} has {train_info.num_classes} classes."
        )
    if teacher is not None and tuple(teacher.input_shape[1:]) + tuple(teacher.output_shape[1:]) != input_shape + (
        num_classes,
    ):
        raise BridgeError(
            f"The teacher maps {tuple(teacher.input_shape[1:])} to {teacher.output_shape[-1]} classes, "
            f"the student {input_shape} to {num_classes}; distillation needs the same images and classes."
        )

    parity = {"student": check_parity(student_keras3, student, eval_images, "student")}
    keras3_accuracy = float(np.mean(predict(student_keras3, eval_images).argmax(-1) == eval_labels))
    if teacher is not None:
        parity["teacher"] = check_parity(teacher_keras3, teacher, eval_images, "teacher")
        teacher.trainable = False
    timings["data_and_parity_s"] = time.perf_counter() - started - timings["rebuild_s"]

    # From the example count: a tfds pipeline's cardinality can be unknown.
    steps_per_epoch = math.ceil(train_info.num_examples / spec.batch_size)
    total_steps = steps_per_epoch * spec.epochs
    pruning = None
    callback = None
    if spec.mode == "qat":
        model = quantize(student, tf_keras, tfmot, custom_layers)
    else:
        schedule = pruning_schedule(total_steps, spec.sparsity)
        model = prune(student, tf_keras, tfmot, custom_layers, schedule)
        callback = tfmot.sparsity.keras.UpdatePruningStep()
        callback.set_model(model)
        callback.on_train_begin()
        pruning = {"schedule": {"class": "PolynomialDecay", **schedule}}

    what = "Quantization-aware training" if spec.mode == "qat" else f"Pruning to {spec.sparsity:.0%} sparsity"
    if log is not None:
        log(
            f"{what}: {spec.epochs} epoch(s) on {train_info.num_examples:,} {spec.dataset} training images "
            f"({steps_per_epoch:,} steps of {spec.batch_size}), method {unit.name!r}."
        )
    fit_started = time.perf_counter()
    loss_history = fine_tune(
        model,
        teacher,
        train_dataset,
        spec.epochs,
        spec.learning_rate,
        unit.name,
        hyperparameters,
        spec.seed,
        on_epoch_end=(lambda: callback.on_epoch_end(-1)) if callback else None,
        steps_per_epoch=steps_per_epoch,
        log=log,
        initial_epoch=spec.initial_epoch,
    )
    timings["fine_tune_s"] = time.perf_counter() - fit_started
    if spec.mode == "prune":
        model = tfmot.sparsity.keras.strip_pruning(model)
        per_layer, overall, size = measure_sparsity(model)
        pruning.update({"per_layer_sparsity": per_layer, "overall_sparsity": overall, "prunable_weights": size})
    float_predictions = predict(model, eval_images).argmax(-1)
    float_accuracy = float(np.mean(float_predictions == eval_labels))

    convert_started = time.perf_counter()
    output = Path(spec.output)
    convert_int8(model, representative, output)
    timings["convert_s"] = time.perf_counter() - convert_started
    int8 = evaluate_tflite(output, eval_images, eval_labels)
    timings["total_s"] = time.perf_counter() - started

    report = {
        "mode": spec.mode,
        "model": str(spec.model),
        "teacher": str(spec.teacher) if spec.teacher else None,
        "method": unit.name,
        "loss": unit.description,
        "epochs": spec.epochs,
        "initial_epoch": spec.initial_epoch,
        "steps": total_steps,
        "optimizer": {"name": "adam", "learning_rate": spec.learning_rate, "batch_size": spec.batch_size},
        "hyperparameters": hyperparameters,
        "seed": spec.seed,
        "dataset": spec.dataset,
        "normalization": {"mean": list(train_info.mean), "std": list(train_info.std)},
        "train_examples": train_info.num_examples,
        "eval_examples": int(len(eval_labels)),
        "representative_examples": int(len(representative)),
        "parity_max_abs_diff": parity,
        "parity_tolerance": PARITY_TOLERANCE,
        "keras3_top1_accuracy_before": keras3_accuracy,
        "loss_per_epoch": loss_history,
        "float_top1_accuracy": float_accuracy,
        "pruning": pruning,
        "int8_file": str(output),
        "int8_size_bytes": output.stat().st_size,
        "int8_top1_accuracy": int8["top1_accuracy"],
        "int8_float_top1_agreement": float(np.mean(int8["predictions"] == float_predictions)),
        "int8_input_dtype": int8["input_dtype"],
        "int8_output_dtype": int8["output_dtype"],
        "int8_input_quantization": int8["input_quantization"],
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    write_atomically(Path(spec.report), (json.dumps(report, indent=2) + "\n").encode())
    return report


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--spec",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="A fine-tuning written as JSON (stkd_keras.export.plan.FineTuning, what `stkd-keras export` passes); then no other option.",
)
@click.option(
    "--model",
    "model",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The Keras 3 student (.keras). Required without --spec.",
)
@click.option(
    "--teacher",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The Keras 3 teacher (.keras); without it the student fine-tunes on plain cross-entropy.",
)
@click.option(
    "--dataset",
    default=None,
    help="Required without --spec. Dataset name for stkd_keras.data.load (e.g. fashion_mnist, cifar100, folder:PATH).",
)
@click.option("--data-dir", default=None, help="Where the dataset lives (see stkd_keras.data.load).")
@click.option("--mean", default=None, help="Per-channel normalisation mean, comma-separated (default: the dataset's).")
@click.option("--std", default=None, help="Per-channel normalisation std, comma-separated (default: the dataset's).")
@click.option(
    "--mode",
    default=None,
    type=click.Choice(["qat", "prune"]),
    help="Quantization-aware training or magnitude pruning. Required without --spec.",
)
@click.option(
    "--sparsity",
    default=0.5,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Target sparsity of the pruned kernels (--mode prune).",
)
@click.option("--epochs", default=2, show_default=True, type=click.IntRange(min=1), help="Fine-tuning epochs.")
@click.option(
    "--train-subset",
    default=None,
    type=click.IntRange(min=1),
    help="Fine-tune on the first N training examples of the fixed shuffle.",
)
@click.option("--eval-subset", default=None, type=click.IntRange(min=1), help="Evaluate on the first N test examples.")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Fine-tuning batch size.")
@click.option(
    "--learning-rate",
    default=1e-3,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Adam learning rate.",
)
@click.option(
    "--method",
    default=None,
    help="The distillation method of the fine-tuning, a name in stkd_keras.methods.list_methods() (default: stkd with --teacher, ce without).",
)
@click.option(
    "--hyperparameters",
    default="{}",
    show_default=True,
    help="The method's hyperparameters as JSON, e.g. '{\"temperature\": 2.0}' (the others: its defaults).",
)
@click.option(
    "--representative",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Training images calibrating the int8 conversion.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of data order, augmentation and mixup.")
@click.option(
    "--initial-epoch",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Epochs the student has trained (the run's): the fine-tuning's epochs count on from it, past a method's warm-up.",
)
@click.option(
    "--output",
    default=None,
    type=click.Path(dir_okay=False),
    help="The int8 .tflite file to write. Required without --spec.",
)
@click.option(
    "--report", default=None, type=click.Path(dir_okay=False), help="The JSON report to write. Required without --spec."
)
@click.pass_context
def main(ctx, spec, **options):
    """Quantization-aware training or pruning of a Keras 3 student with tfmot, distilled from its teacher, to int8 TFLite.

    Runs as its own process: tfmot needs legacy Keras (tf_keras).
    """
    from stkd_keras.data import DatasetNotFoundError

    try:
        fine_tuning = _fine_tuning(ctx, spec, options)
        report = run(fine_tuning, log=click.echo)  # flushed per line: the exporting process shows it as it comes
    except (BridgeError, DatasetNotFoundError, ValueError) as error:
        raise click.ClickException(" ".join(str(error).split())) from None
    click.echo(
        f"{report['mode']}: parity {report['parity_max_abs_diff']['student']:.1e}, float top-1 "
        f"{report['float_top1_accuracy']:.4f}, "
        f"int8 top-1 {report['int8_top1_accuracy']:.4f}, {report['int8_size_bytes']} bytes -> {report['int8_file']}"
    )


def _fine_tuning(ctx, spec, options: dict):
    """The `FineTuning` of this process: read from --spec, or built from the options."""
    from click.core import ParameterSource

    from stkd_keras.export.plan import FineTuning

    if spec is not None:
        given = [
            f"--{name.replace('_', '-')}"
            for name in options
            if ctx.get_parameter_source(name) != ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(f"--spec holds the whole fine-tuning; drop {', '.join(given)}.")
        return FineTuning.from_json(Path(spec).read_text())
    missing = [f"--{name}" for name in ("model", "dataset", "mode", "output", "report") if options[name] is None]
    if missing:
        raise click.UsageError(f"Missing option(s) {', '.join(missing)} (or give the whole fine-tuning with --spec).")
    options["mean"] = _parse_floats(options["mean"], "--mean")  # FineTuning checks that they come together, and match
    options["std"] = _parse_floats(options["std"], "--std")
    try:
        options["hyperparameters"] = json.loads(options["hyperparameters"])
    except json.JSONDecodeError as error:
        raise click.BadParameter(
            f"Expected a JSON object. Received: {options['hyperparameters']!r} ({error})",
            param_hint="--hyperparameters",
        ) from None
    if not isinstance(options["hyperparameters"], dict):
        raise click.BadParameter(
            f"Expected a JSON object. Received: {options['hyperparameters']!r}", param_hint="--hyperparameters"
        )
    return FineTuning(**options)


if __name__ == "__main__":
    main()
