"""The optimizer of a run: SGD or Adam, with the run's learning-rate schedule."""

from __future__ import annotations

import keras

from stkd_keras.config import RunConfig


def make_optimizer(config: RunConfig, steps_per_epoch: int):
    """SGD (momentum, decoupled weight decay) or Adam with the configured learning-rate schedule."""
    if config.lr_schedule == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps_per_epoch * config.epochs)
    elif config.lr_schedule == "step":
        boundaries = [epoch * steps_per_epoch for epoch in config.lr_decay_epochs]
        values = [config.learning_rate * config.lr_decay_rate**i for i in range(len(boundaries) + 1)]
        rate = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    else:
        rate = config.learning_rate
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=config.weight_decay or None)
    return keras.optimizers.SGD(rate, momentum=config.momentum, weight_decay=config.weight_decay or None)
