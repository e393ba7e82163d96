"""Keras 3 -> tf_keras: a Keras 3 functional model rebuilt layer by layer as a legacy Keras model, same weights.

Part of the QAT/pruning bridge (`stkd_keras.export.tfmot_bridge`), which runs it in its own process:
tensorflow-model-optimization works only with `tf_keras`. Every function takes the `tf_keras` module as an
argument, so importing this module loads neither; the method test kit (`stkd_keras.testing`) also rebuilds with it,
without tfmot.

The rebuilt model is checked against the Keras 3 one on real images (`check_parity`, to `PARITY_TOLERANCE`).

Layers it translates: InputLayer, Conv2D, DepthwiseConv2D, BatchNormalization,
ReLU, Activation, Add, Concatenate, ZeroPadding2D, MaxPooling2D,
AveragePooling2D, GlobalAveragePooling2D, Flatten, Dropout, Dense and
stkd-keras's ChannelShuffle / ChannelSplit. The rebuilt model runs in float32
whatever the saved dtype policy (QAT in float16 is not meaningful), and
weight regularizers are not carried over (the fine-tuning loss is the method's).
"""

from __future__ import annotations

import numpy as np

from stkd_keras.export.plan import BridgeError

PARITY_TOLERANCE = 1e-5


# --- tf_keras equivalents of the zoo's custom layers ---------------------------------------------


def custom_layer_classes(tf_keras):
    """tf_keras versions of `stkd_keras.models.layers.ChannelShuffle` / `ChannelSplit`: their functions, config."""
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


# --- Keras 3 layer configs -> tf_keras layers ------------------------------------------------------


def _tuple(value):
    return tuple(_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _conv2d(layers, config):
    return layers.Conv2D(
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


def _depthwise_conv2d(layers, config):
    return layers.DepthwiseConv2D(
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


def _batch_normalization(layers, config):
    if config.get("renorm") or config.get("synchronized"):
        raise BridgeError(
            f"BatchNormalization layer {config['name']!r} uses renorm or synchronized statistics, which the "
            "tf_keras bridge does not translate."
        )
    return layers.BatchNormalization(
        axis=config["axis"],
        momentum=config["momentum"],
        epsilon=config["epsilon"],
        center=config["center"],
        scale=config["scale"],
        name=config["name"],
    )


def _pooling(layer_class):
    return lambda config: layer_class(
        _tuple(config["pool_size"]),
        strides=_tuple(config["strides"]),
        padding=config["padding"],
        data_format=config["data_format"],
        name=config["name"],
    )


def _layer_factories(tf_keras, custom_layers):
    """Class name -> function(config) building the tf_keras layer with the same hyperparameters."""
    L = tf_keras.layers
    ChannelShuffle, ChannelSplit = custom_layers
    return {
        "Conv2D": lambda c: _conv2d(L, c),
        "DepthwiseConv2D": lambda c: _depthwise_conv2d(L, c),
        "BatchNormalization": lambda c: _batch_normalization(L, c),
        "ReLU": lambda c: L.ReLU(
            max_value=c["max_value"], negative_slope=c["negative_slope"], threshold=c["threshold"], name=c["name"]
        ),
        "Activation": lambda c: L.Activation(c["activation"], name=c["name"]),
        "Add": lambda c: L.Add(name=c["name"]),
        "Concatenate": lambda c: L.Concatenate(axis=c["axis"], name=c["name"]),
        "ZeroPadding2D": lambda c: L.ZeroPadding2D(_tuple(c["padding"]), data_format=c["data_format"], name=c["name"]),
        "MaxPooling2D": _pooling(L.MaxPooling2D),
        "AveragePooling2D": _pooling(L.AveragePooling2D),
        "GlobalAveragePooling2D": lambda c: L.GlobalAveragePooling2D(
            data_format=c["data_format"], keepdims=c["keepdims"], name=c["name"]
        ),
        "Flatten": lambda c: L.Flatten(data_format=c["data_format"], name=c["name"]),
        "Dropout": lambda c: L.Dropout(c["rate"], noise_shape=c.get("noise_shape"), seed=c.get("seed"), name=c["name"]),
        "Dense": lambda c: L.Dense(c["units"], activation=c["activation"], use_bias=c["use_bias"], name=c["name"]),
        "ChannelShuffle": lambda c: ChannelShuffle(c["groups"], name=c["name"]),
        "ChannelSplit": lambda c: ChannelSplit(c["num_splits"], name=c["name"]),
    }


# --- The functional graph ----------------------------------------------------------------------------


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


def _functional_config(model) -> dict:
    """`model.get_config()`, refused in one sentence when it is not a functional model's."""
    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    if not config or "layers" not in config:
        raise BridgeError(
            f"Model {model.name!r} ({type(model).__name__}) is not a functional Keras model; the tf_keras bridge "
            "translates functional models only."
        )
    return config


def _check_supported(layer_configs: list, factories: dict) -> None:
    """Names the first layer whose class the bridge does not translate, before anything is built."""
    for layer_config in layer_configs:
        class_name = layer_config["class_name"]
        if class_name != "InputLayer" and class_name not in factories:
            raise BridgeError(
                f"Layer {layer_config['name']!r} of class {class_name} is not supported by the tf_keras bridge "
                f"(supported: {', '.join(sorted(factories))})."
            )


def _input_tensor(tf_keras, layer_config: dict):
    """The tf_keras input of an InputLayer config, in float32 whatever the saved dtype."""
    input_config = layer_config["config"]
    shape = input_config.get("batch_shape") or input_config.get("batch_input_shape")
    return tf_keras.Input(batch_shape=tuple(shape), dtype="float32", name=layer_config["name"])


def _inputs_ready(nodes: list, tensors: dict) -> bool:
    """Whether every Keras tensor the layer's inbound nodes read has been built."""
    return all(ref[:2] in tensors for node in nodes for ref in map(tuple, _history_refs(node)))


def _call_nodes(layer, name: str, nodes: list, tensors: dict) -> None:
    """Calls `layer` once per inbound node of its config, recording each call's outputs in `tensors`."""
    for node_index, node in enumerate(nodes):
        args = _replace_tensors(node.get("args", []), tensors)
        kwargs = {k: v for k, v in _replace_tensors(node.get("kwargs", {}), tensors).items() if v is not None}
        kwargs.pop("mask", None)
        outputs = layer(*args, **kwargs)
        tensors[(name, node_index)] = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _rebuild_graph(model, config: dict, tf_keras, factories: dict, keras3_layers: dict) -> tuple[dict, dict]:
    """Calls new tf_keras layers on each other's outputs as the config's inbound nodes say.

    Returns:
        (layer name, node index) -> list of output tensors, and layer name -> the tf_keras layer built for it.
    """
    tensors = {}
    built = {}
    pending = list(config["layers"])
    # Functional configs list layers in topological order; the loop also tolerates any order.
    while pending:
        progress = False
        for layer_config in list(pending):
            name = layer_config["name"]
            if layer_config["class_name"] == "InputLayer":
                tensors[(name, 0)] = [_input_tensor(tf_keras, layer_config)]
            elif _inputs_ready(layer_config["inbound_nodes"], tensors):
                layer = built.get(name) or factories[layer_config["class_name"]](keras3_layers[name].get_config())
                built[name] = layer
                _call_nodes(layer, name, layer_config["inbound_nodes"], tensors)
            else:
                continue
            pending.remove(layer_config)
            progress = True
        if not progress:
            raise BridgeError(
                f"Model {model.name!r} has layers whose inputs never become available: {[c['name'] for c in pending]}."
            )
    return tensors, built


def _copy_weights(built: dict, keras3_layers: dict) -> None:
    """Sets each tf_keras layer's weights to its Keras 3 layer's, refusing shapes that do not fit."""
    for name, layer in built.items():
        weights = keras3_layers[name].get_weights()
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in weights] != expected:
            raise BridgeError(
                f"Layer {name!r} ({type(layer).__name__}): Keras 3 weights {[tuple(w.shape) for w in weights]} "
                f"do not fit the tf_keras layer's {expected}."
            )
        layer.set_weights(weights)


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
    config = _functional_config(model)
    factories = _layer_factories(tf_keras, custom_layers)
    _check_supported(config["layers"], factories)
    keras3_layers = {layer.name: layer for layer in model.layers}
    tensors, built = _rebuild_graph(model, config, tf_keras, factories, keras3_layers)
    inputs = [tensors[(name, node)][index] for name, node, index in _endpoints(config["input_layers"])]
    outputs = [tensors[(name, node)][index] for name, node, index in _endpoints(config["output_layers"])]
    if len(outputs) != 1:
        raise BridgeError(f"Model {model.name!r} has {len(outputs)} outputs; the bridge expects one (the logits).")
    rebuilt = tf_keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0], name=model.name)
    _copy_weights(built, keras3_layers)
    return rebuilt


# --- Parity --------------------------------------------------------------------------------------------


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
