"""`stkd+ls`: STKD with logit standardisation (Sun et al., CVPR 2024), a preset of `stkd`.

Both KD terms of `stkd` (on the mixed batch and, if weighted, on the clean
one) standardise teacher and student logits per sample before the
temperature. The settings are the authors' for KD (`kd+ls`: T 2, w_kd 9,
w_ce 0.1); nobody has published STKD with logit standardisation, so this
combination, and whether those settings suit it, is new.
"""

from __future__ import annotations

from stkd_keras.methods.registry import register_preset

register_preset(
    "stkd+ls",
    "stkd",
    "STKD with logit standardisation: KD's LS settings (T 2, w_kd 9, w_ce 0.1, from "
    "sunshangquan/logit-standardization-KD "
    "tools/train.py --logit-stand --base-temp 2 --kd-weight 9 and mdistiller/engine/cfg.py); a new combination, not "
    "from either paper",
    temperature=2.0,
    ce_weight=0.1,
    kd_weight=9.0,
    logit_standardization=True,
)
