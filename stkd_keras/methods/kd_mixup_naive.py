"""`kd_mixup_naive`: the ablation of STKD where the teacher sees the clean images and the student the mixed ones.

    L = w_ce * CE(y_mix, z_s(x_mix)) + w_kd * KD(z_t(x), z_s(x_mix))

It separates what STKD's shared virtual sample adds from mixup alone.
"""

from __future__ import annotations

from stkd_keras.methods.registry import register_method
from stkd_keras.methods.mixup_kd import MixupKD


@register_method
class KDMixupNaive(MixupKD):
    """Teacher on x, student on x_mix."""

    name = "kd_mixup_naive"
    description = "teacher on the clean images, student on mixup samples"
    teacher_sees = "clean"
