"""What tensorflow-model-optimization does to a rebuilt tf_keras model: quantization-aware training or pruning.

Part of the QAT/pruning bridge (`stkd_keras.export.tfmot_bridge`), which alone imports it, in its own process;
`tf_keras` and `tfmot` are passed in, so importing this module loads neither.

QAT: `tfmot.quantization.keras.quantize_model`. The weightless channel layers of the ShuffleNets
(ChannelShuffle, ChannelSplit) only move values, so they get a no-op quantize config: their outputs keep the
quantization of their inputs.
Pruning: `prune_low_magnitude` on every Conv2D, DepthwiseConv2D and Dense layer, PolynomialDecay (power 3) from 0
to the target sparsity, reaching it at 80% of the fine-tuning steps so that the last 20% recover with the final
mask; then `strip_pruning` (by the bridge, after the fine-tuning).
"""

from __future__ import annotations

import re

import numpy as np

from stkd_keras.export.plan import BridgeError

# The share of fine-tuning steps over which the pruning schedule ramps up to the target sparsity.
PRUNING_RAMP_FRACTION = 0.8


def _no_op_quantize_config(quantization):
    """A tfmot `QuantizeConfig` class for the weightless channel layers (their outputs keep their inputs' ranges)."""

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

    return NoOpQuantizeConfig


def _quantize_error(model, error: Exception) -> BridgeError:
    """One sentence for a tfmot failure: the layer it cannot quantize, else the first line of its message."""
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
        return BridgeError(f"tfmot's quantize_model cannot quantize layer {name!r} of class {class_name}{hint}.")
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return BridgeError(f"tfmot's quantize_model failed on model {model.name!r}: {first_line}")


def quantize(model, tf_keras, tfmot, custom_layers: tuple):
    """`quantize_model`, with a no-op quantize config for the weightless channel layers.

    Raises:
        BridgeError: Naming the layer tfmot's default 8-bit scheme cannot quantize. tfmot decides after its
            graph transforms (a BatchNormalization that is a convolution's sole consumer is folded into it; any
            other BatchNormalization, as in pre-activation WRN blocks or after ShuffleV1's grouped-conv
            concatenation, is rejected), so there is no pre-check.
    """
    quantization = tfmot.quantization.keras
    NoOpQuantizeConfig = _no_op_quantize_config(quantization)

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
        raise _quantize_error(model, error) from None


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
