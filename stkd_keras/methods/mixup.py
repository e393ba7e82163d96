"""`mixup`: the student alone on mixup samples (Zhang et al. 2018), cross-entropy on the mixed labels."""

from __future__ import annotations

import dataclasses

from stkd_keras.methods.base import Hyperparameters
from stkd_keras.methods.registry import register_method
from stkd_keras.methods.ce import CrossEntropy
from stkd_keras.validation import positive_finite


@dataclasses.dataclass
class MixupHyperparameters(Hyperparameters):
    """How the mixing coefficients are drawn."""

    mixup_alpha: float = dataclasses.field(
        default=0.2, metadata={"help": "a of the mixing coefficient lambda ~ Beta(a, a), a > 0."}
    )
    lambda_per_sample: bool = dataclasses.field(
        default=False,
        metadata={"help": "One mixup lambda per sample instead of one per batch.", "off_flag": "--lambda-per-batch"},
    )

    def validate(self) -> None:
        super().validate()
        self.mixup_alpha = positive_finite("mixup_alpha", self.mixup_alpha)
        if self.lambda_per_sample not in (True, False):
            raise ValueError(
                "Expected `lambda_per_sample` to be True or False. Received: "
                f"lambda_per_sample={self.lambda_per_sample!r}"
            )
        self.lambda_per_sample = bool(self.lambda_per_sample)


@register_method
class Mixup(CrossEntropy):
    """CE(y_mix, z_s(x_mix)): `ce`'s loss, on the mixed batch (the context's labels are mixed)."""

    name = "mixup"
    description = "student alone on mixup samples (no teacher)"
    hyperparameters = MixupHyperparameters
    mixes = True
