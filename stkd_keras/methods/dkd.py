"""`dkd`: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022), on clean images.

DKD splits Hinton's KD term at the target class t (`losses.dkd_divergences`):
TCKD, the KL between the binary distributions [p_t, 1 - p_t] of teacher and
student, and NCKD, the KL between their distributions over the other classes
(renormalised), each softened by T and times T^2. It weights the two freely
and ramps them up over the first epochs:

    L = w_ce * CE(y, z_s(x)) + min(1, (epoch + 1) / warmup_epochs) * (alpha * TCKD + beta * NCKD)

with `epoch` 0-based (mdistiller counts from 1: min(epoch / warmup, 1)). The
defaults are mdistiller's CIFAR-100 DKD (megvii-research/mdistiller,
`mdistiller/engine/cfg.py`: CE_WEIGHT 1.0, ALPHA 1.0, BETA 8.0, T 4.0,
WARMUP 20; `configs/cifar100/dkd/res32x4_res8x4.yaml` keeps them for
resnet32x4 -> resnet8x4). The terms are reported unweighted as `ce_loss`,
`tckd_loss`, `nckd_loss`; the weights of the last two carry alpha and beta
times the warm-up factor. The preset `dkd+ls` adds logit standardisation
with its authors' settings.
"""

from __future__ import annotations

import dataclasses
import numbers

from stkd_keras.methods.base import DistillationMethod, LossTerm
from stkd_keras.methods.registry import register_method, register_preset
from stkd_keras.methods.ce import cross_entropy
from stkd_keras.methods.kd import SoftenedLogitsHyperparameters, softened_logits


@dataclasses.dataclass
class DKDHyperparameters(SoftenedLogitsHyperparameters):
    """DKD's weights and warm-up (mdistiller's CIFAR-100 defaults), with KD's temperature and logit standardisation."""

    ce_weight: float = dataclasses.field(default=1.0, metadata={"help": "Weight w_ce >= 0 of the cross-entropy term."})
    tckd_weight: float = dataclasses.field(
        default=1.0, metadata={"help": "DKD: weight alpha >= 0 of the target-class term TCKD (mdistiller's DKD.ALPHA)."}
    )
    nckd_weight: float = dataclasses.field(
        default=8.0,
        metadata={"help": "DKD: weight beta >= 0 of the non-target-class term NCKD (mdistiller's DKD.BETA)."},
    )
    warmup_epochs: int = dataclasses.field(
        default=20,
        metadata={
            "help": "DKD: epochs over which the TCKD and NCKD weights grow linearly to full, "
            "min(1, (epoch + 1) / warmup_epochs); 1 means no warm-up. mdistiller's 20 is 1/12 of its 240-epoch "
            "recipe: for much shorter runs keep that fraction (e.g. 2 or 3 for 30 epochs)."
        },
    )

    def loss_weights(self) -> dict:
        return {"ce_weight": self.ce_weight, "tckd_weight": self.tckd_weight, "nckd_weight": self.nckd_weight}

    def validate(self) -> None:
        super().validate()
        if (
            isinstance(self.warmup_epochs, bool)
            or not isinstance(self.warmup_epochs, numbers.Integral)
            or self.warmup_epochs < 1
        ):
            raise ValueError(
                f"Expected `warmup_epochs` to be an int >= 1. Received: warmup_epochs={self.warmup_epochs!r}"
            )
        self.warmup_epochs = int(self.warmup_epochs)


def warmup_factor(epoch, warmup_epochs: int):
    """min(1, (epoch + 1) / warmup_epochs) as a float32 scalar, for the 0-based `epoch` of `fit`.

    mdistiller's min(epoch / warmup, 1), whose epochs count from 1: with
    warmup_epochs 20 the first epoch weighs 1/20 and the twentieth and later 1.
    """
    from keras import ops

    return ops.minimum(1.0, ops.cast(epoch + 1, "float32") / float(warmup_epochs))


@register_method
class DKD(DistillationMethod):
    """w_ce * CE(y, z_s(x)) + warm-up * (alpha * TCKD(z_t(x), z_s(x)) + beta * NCKD(z_t(x), z_s(x)))."""

    name = "dkd"
    description = (
        "Decoupled KD (Zhao et al., CVPR 2022) on clean images: target and non-target terms weighted apart, "
        "with a warm-up"
    )
    hyperparameters = DKDHyperparameters
    needs_teacher = True
    teacher_sees = "clean"

    def term_names(self, hyperparameters):
        return ("ce_loss", "tckd_loss", "nckd_loss")

    def loss_terms(self, context, hyperparameters):
        from stkd_keras import losses

        teacher, student = softened_logits(context.teacher_logits, context.student_logits, hyperparameters)
        tckd, nckd = losses.dkd_divergences(teacher, student, context.labels, hyperparameters.temperature)
        ramp = warmup_factor(context.epoch, hyperparameters.warmup_epochs)
        return {
            "ce_loss": LossTerm(cross_entropy(context), hyperparameters.ce_weight),
            "tckd_loss": LossTerm(losses.batch_mean(tckd, context.sample_weight), hyperparameters.tckd_weight * ramp),
            "nckd_loss": LossTerm(losses.batch_mean(nckd, context.sample_weight), hyperparameters.nckd_weight * ramp),
        }


# The authors' DKD + logit standardisation for resnet32x4 -> resnet8x4 on CIFAR-100
# (sunshangquan/logit-standardization-KD): README.md runs `--cfg configs/cifar100/dkd/resnet32x4_resnet8x4.yaml
# --logit-stand --base-temp 2 --kd-weight 9`; for DKD tools/train.py then sets DKD.ALPHA = 1.0 * 9,
# DKD.BETA = 8.0 * 9 and DKD.T = 2 (the config keeps mdistiller/engine/cfg.py's CE_WEIGHT 1.0, ALPHA 1.0, BETA 8.0,
# WARMUP 20); its log is logs/DKD/dkd,resnet32x4,resnet8x4,2,9.txt (base temperature 2, KD weight 9).
register_preset(
    "dkd+ls",
    "dkd",
    "DKD with logit standardisation (Sun et al., CVPR 2024): T 2, alpha 9, beta 72, w_ce 1, warm-up 20, the authors' "
    "resnet32x4 -> resnet8x4 CIFAR-100 settings (sunshangquan/logit-standardization-KD: tools/train.py --logit-stand "
    "--base-temp 2 --kd-weight 9 on configs/cifar100/dkd/resnet32x4_resnet8x4.yaml, defaults in "
    "mdistiller/engine/cfg.py)",
    temperature=2.0,
    ce_weight=1.0,
    tckd_weight=9.0,
    nckd_weight=72.0,
    warmup_epochs=20,
    logit_standardization=True,
)
