"""stkd-keras: Similarity Transfer for Knowledge Distillation (STKD) for Keras 3.

Zhao et al. 2021, "Similarity Transfer for Knowledge Distillation",
arXiv 2103.10047.
"""

import os

# TensorFlow's C++ start-up messages (CUDA probing, CPU features) are noise for
# users; an explicit TF_CPP_MIN_LOG_LEVEL still wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from stkd_keras.distiller import METHODS, Distiller
from stkd_keras.losses import KDLoss, STKDLoss, kd_divergence, kd_loss, soft_cross_entropy, stkd_loss
from stkd_keras.mixup import MixupBatch, apply_mixup, sample_beta
from stkd_keras.models import get_model, list_models, resnet, small_cnn

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "Distiller",
    "KDLoss",
    "STKDLoss",
    "MixupBatch",
    "get_model",
    "kd_divergence",
    "kd_loss",
    "list_models",
    "apply_mixup",
    "resnet",
    "sample_beta",
    "small_cnn",
    "soft_cross_entropy",
    "stkd_loss",
]
