"""What `stkd` and `kd_mixup_naive` share.

Mixup for the student, KD from the teacher, an optional KD term on clean images. Registers no method itself.
"""

from __future__ import annotations

import dataclasses

from stkd_keras.methods.base import BatchContext, DistillationMethod, LossTerm
from stkd_keras.methods.kd import KDHyperparameters, kd_terms, softened_logits
from stkd_keras.methods.mixup import MixupHyperparameters


@dataclasses.dataclass
class MixupKDHyperparameters(MixupHyperparameters, KDHyperparameters):
    """KD's temperature and weights, mixup's draw, and the weight of the optional KD term on clean images."""

    clean_kd_weight: float = dataclasses.field(
        default=0.0,
        metadata={"help": "Weight >= 0 of an extra KD term on the clean images (the paper's loss has none)."},
    )

    def loss_weights(self) -> dict:
        return {**super().loss_weights(), "clean_kd_weight": self.clean_kd_weight}


def mixup_kd_terms(context: BatchContext, hyperparameters: MixupKDHyperparameters, kd_value=None) -> dict:
    """KD's two terms on what each network saw, and `clean_kd_loss` when its weight is > 0.

    Both KD terms standardise the logits first when `logit_standardization` is on.

    In evaluation the batch is clean, so the clean term is the KD term: it is
    reported, and not added a second time. `kd_value`: as for `kd_terms`.
    """
    terms = kd_terms(context, hyperparameters, kd_value)
    if hyperparameters.clean_kd_weight > 0:
        if context.training:
            from stkd_keras import losses

            teacher, student = softened_logits(
                context.clean_teacher_logits, context.clean_student_logits, hyperparameters
            )
            value = losses.kd_loss(teacher, student, hyperparameters.temperature)
            terms["clean_kd_loss"] = LossTerm(value, hyperparameters.clean_kd_weight)
        else:
            terms["clean_kd_loss"] = LossTerm(terms["kd_loss"].value, 0.0)
    return terms


class MixupKD(DistillationMethod):
    """What `stkd` and `kd_mixup_naive` share: mixup for the student, KD from the teacher, the optional clean term."""

    hyperparameters = MixupKDHyperparameters
    needs_teacher = True
    mixes = True

    def uses_clean_logits(self, hyperparameters):
        return hyperparameters.clean_kd_weight > 0

    def term_names(self, hyperparameters):
        return ("ce_loss", "kd_loss") + (("clean_kd_loss",) if hyperparameters.clean_kd_weight > 0 else ())

    def loss_terms(self, context, hyperparameters):
        return mixup_kd_terms(context, hyperparameters)
