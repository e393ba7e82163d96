"""stkd-keras: Similarity Transfer for Knowledge Distillation (STKD) for Keras 3.

Zhao et al. 2021, "Similarity Transfer for Knowledge Distillation",
arXiv 2103.10047.

The public names below are imported on first use, so that `stkd-keras --help`
answers without loading Keras or its backend.
"""

import os

from stkd_keras.lazy import lazy_attributes

# TensorFlow's C++ start-up messages (CUDA probing, CPU features) are noise for
# users; an explicit TF_CPP_MIN_LOG_LEVEL still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_EXPORTS = {
    "Distiller": "stkd_keras.distiller",
    "BatchContext": "stkd_keras.methods",
    "DistillationMethod": "stkd_keras.methods",
    "Hyperparameters": "stkd_keras.methods",
    "LossTerm": "stkd_keras.methods",
    "get_method": "stkd_keras.methods",
    "list_methods": "stkd_keras.methods",
    "register_method": "stkd_keras.methods",
    "register_preset": "stkd_keras.methods",
    "KDLoss": "stkd_keras.losses",
    "STKDLoss": "stkd_keras.losses",
    "kd_divergence": "stkd_keras.losses",
    "kd_loss": "stkd_keras.losses",
    "soft_cross_entropy": "stkd_keras.losses",
    "stkd_loss": "stkd_keras.losses",
    "MixupBatch": "stkd_keras.mixup",
    "apply_mixup": "stkd_keras.mixup",
    "sample_beta": "stkd_keras.mixup",
    "get_model": "stkd_keras.models",
    "list_models": "stkd_keras.models",
    "resnet": "stkd_keras.models",
    "small_cnn": "stkd_keras.models",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)
