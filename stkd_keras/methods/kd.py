"""`kd`: Hinton et al. 2015 knowledge distillation on clean images.

    L = w_ce * CE(y, z_s(x)) + w_kd * T^2 * KL(softmax(z_t(x) / T) || softmax(z_s(x) / T))

With `logit_standardization` (Sun et al., CVPR 2024), z_t and z_s in the KD
term are first standardised per sample, (z - mean(z)) / (std(z) + 1e-7); the
cross-entropy keeps the raw logits. The preset `kd+ls` is KD with the
authors' settings for it.
"""

from __future__ import annotations

import dataclasses

from stkd_keras.methods.base import BatchContext, DistillationMethod, Hyperparameters, LossTerm
from stkd_keras.methods.ce import cross_entropy
from stkd_keras.methods.registry import register_method, register_preset
from stkd_keras.validation import positive_finite


@dataclasses.dataclass
class SoftenedLogitsHyperparameters(Hyperparameters):
    """What every loss that softens logits by a temperature shares: T, and whether the logits are standardised first."""

    temperature: float = dataclasses.field(default=4.0, metadata={"help": "KD temperature T > 0."})
    logit_standardization: bool = dataclasses.field(
        default=False,
        metadata={
            "help": "Standardise teacher and student logits per sample, (z - mean) / (std + 1e-7), before the "
            "temperature of the KD terms (Sun et al., CVPR 2024); cross-entropy keeps the raw logits."
        },
    )

    def validate(self) -> None:
        super().validate()
        self.temperature = positive_finite("temperature", self.temperature)
        if self.logit_standardization not in (True, False):
            raise ValueError(
                "Expected `logit_standardization` to be True or False. Received: "
                f"logit_standardization={self.logit_standardization!r}"
            )
        self.logit_standardization = bool(self.logit_standardization)


def softened_logits(teacher_logits, student_logits, hyperparameters: SoftenedLogitsHyperparameters) -> tuple:
    """The teacher and student logits as a KD term softens them: standardised per sample if `logit_standardization`."""
    if not hyperparameters.logit_standardization:
        return teacher_logits, student_logits
    from stkd_keras import losses

    return losses.standardize_logits(teacher_logits), losses.standardize_logits(student_logits)


@dataclasses.dataclass
class KDHyperparameters(SoftenedLogitsHyperparameters):
    """Temperature and loss weights of KD (the standard CIFAR-100 KD recipe of CRD/RepDistiller)."""

    ce_weight: float = dataclasses.field(default=0.1, metadata={"help": "Weight w_ce >= 0 of the cross-entropy term."})
    kd_weight: float = dataclasses.field(default=0.9, metadata={"help": "Weight w_kd >= 0 of the KD term."})

    def loss_weights(self) -> dict:
        return {"ce_weight": self.ce_weight, "kd_weight": self.kd_weight}


def kd_terms(context: BatchContext, hyperparameters: KDHyperparameters, kd_value=None) -> dict:
    """`ce_loss` (labels as given, mixed or not) and `kd_loss` (teacher and student logits as they saw their images).

    `kd_value`, where given, is the KD term's value (a method with another soft target), computed instead of KD's.
    """
    from stkd_keras import losses

    if kd_value is None:
        teacher, student = softened_logits(context.teacher_logits, context.student_logits, hyperparameters)
        kd_value = losses.kd_loss(teacher, student, hyperparameters.temperature, context.sample_weight)
    return {
        "ce_loss": LossTerm(cross_entropy(context), hyperparameters.ce_weight),
        "kd_loss": LossTerm(kd_value, hyperparameters.kd_weight),
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


# The authors' KD + logit standardisation on CIFAR-100 (sunshangquan/logit-standardization-KD): README.md and
# tools/train.py run `--cfg configs/cifar100/kd/resnet32x4_resnet8x4.yaml --logit-stand --base-temp 2 --kd-weight 9`,
# which sets KD.TEMPERATURE = 2 and KD.LOSS.KD_WEIGHT = 9; KD.LOSS.CE_WEIGHT stays at mdistiller/engine/cfg.py's 0.1.
register_preset(
    "kd+ls",
    "kd",
    "KD with logit standardisation (Sun et al., CVPR 2024): T 2, w_kd 9, w_ce 0.1, the authors' CIFAR-100 settings "
    "(sunshangquan/logit-standardization-KD: tools/train.py --logit-stand --base-temp 2 --kd-weight 9; "
    "mdistiller/engine/cfg.py)",
    temperature=2.0,
    ce_weight=0.1,
    kd_weight=9.0,
    logit_standardization=True,
)
