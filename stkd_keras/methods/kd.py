"""`kd`: Hinton et al. 2015 knowledge distillation on clean images.

    L = w_ce * CE(y, z_s(x)) + w_kd * T^2 * KL(softmax(z_t(x) / T) || softmax(z_s(x) / T))
"""

from __future__ import annotations

import dataclasses

from stkd_keras.methods.base import BatchContext, DistillationMethod, Hyperparameters, LossTerm, register_method
from stkd_keras.methods.ce import cross_entropy
from stkd_keras.validation import positive_finite, validate_loss_weights


@dataclasses.dataclass
class KDHyperparameters(Hyperparameters):
    """Temperature and loss weights of KD (the standard CIFAR-100 KD recipe of CRD/RepDistiller)."""

    temperature: float = dataclasses.field(default=4.0, metadata={"help": "KD temperature T > 0."})
    ce_weight: float = dataclasses.field(default=0.1, metadata={"help": "Weight w_ce >= 0 of the cross-entropy term."})
    kd_weight: float = dataclasses.field(default=0.9, metadata={"help": "Weight w_kd >= 0 of the KD term."})

    def loss_weights(self) -> dict:
        """The loss weights, by name; at least one must be > 0."""
        return {"ce_weight": self.ce_weight, "kd_weight": self.kd_weight}

    def validate(self) -> None:
        super().validate()
        self.temperature = positive_finite("temperature", self.temperature)
        weights = self.loss_weights()
        for name, value in zip(weights, validate_loss_weights(**weights)):
            setattr(self, name, value)


def kd_terms(context: BatchContext, hyperparameters: KDHyperparameters) -> dict:
    """`ce_loss` (labels as given, mixed or not) and `kd_loss` (teacher and student logits as they saw their images)."""
    from stkd_keras import losses

    return {
        "ce_loss": LossTerm(cross_entropy(context), hyperparameters.ce_weight),
        "kd_loss": LossTerm(
            losses.kd_loss(context.teacher_logits, context.student_logits, hyperparameters.temperature, context.sample_weight),
            hyperparameters.kd_weight,
        ),
    }


@register_method
class KD(DistillationMethod):
    """w_ce * CE(y, z_s(x)) + w_kd * KD(z_t(x), z_s(x))."""

    name = "kd"
    description = "Hinton KD on clean images"
    hyperparameters = KDHyperparameters
    needs_teacher = True
    teacher_sees = "clean"

    def term_names(self, hyperparameters):
        return ("ce_loss", "kd_loss")

    def loss_terms(self, context, hyperparameters):
        return kd_terms(context, hyperparameters)
