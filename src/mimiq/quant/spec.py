"""`QuantSpec`: the validated quantization scheme (`cfg.quant`), checked before any compute.

Bits: an int in 2..8, or 32 = FP (that tensor is not quantized; the paper code's convention `bits >= 32`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from omegaconf import OmegaConf

FP = 32  # bits value meaning "full precision"
CHOICES = {
    "weight_quantizer": ("minmax", "lsq"),
    "act_quantizer": ("lsq", "lsq_plus", "ema_minmax"),
    "w_granularity": ("channel", "tensor"),
    "a_granularity": ("tensor", "head"),
    "first_last": ("paper", "8bit"),
}


@dataclass(frozen=True)
class QuantSpec:
    """What `quantize_model` does; field meanings are in conf/quant/mimiq.yaml. Defaults = the paper code's
    scheme, with its quirks (`quirk_*`) off."""

    name: str = "mimiq"
    w_bits: int = 4
    a_bits: int = 4
    weight_quantizer: str = "minmax"
    act_quantizer: str = "lsq"
    w_granularity: str = "channel"
    a_granularity: str = "tensor"
    first_last: str = "paper"
    lsq_g_scale: float = 0.01
    ema_beta: float = 0.9
    quirk_signed_min_1e5: bool = False
    quirk_lsq_weight_qmin: bool = False
    quirk_lsq_scalar_step_init: bool = False
    quirk_g_scale_top_level: bool = False
    quirk_zero_point_off_grid: bool = False
    quirk_zero_point_min_init: bool = True

    def __post_init__(self) -> None:
        errors = []
        for f in ("w_bits", "a_bits"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not (2 <= v <= 8 or v == FP):
                errors.append(f"quant.{f}={v!r}: must be 2..8 or {FP} (FP)")
        errors += [
            f"quant.{f}={getattr(self, f)!r}: must be one of {', '.join(c)}"
            for f, c in CHOICES.items()
            if getattr(self, f) not in c
        ]
        if not _is_real(self.lsq_g_scale) or self.lsq_g_scale <= 0:
            errors.append(f"quant.lsq_g_scale={self.lsq_g_scale!r}: must be > 0")
        if not _is_real(self.ema_beta) or not 0 < self.ema_beta < 1:
            errors.append(f"quant.ema_beta={self.ema_beta!r}: must be in (0, 1)")
        quirks = {f.name: getattr(self, f.name) for f in fields(self) if f.name.startswith("quirk_")}
        errors += [f"quant.{k}={v!r}: must be a bool" for k, v in quirks.items() if type(v) is not bool]
        if errors:
            raise ValueError("invalid quantization config: " + "; ".join(errors))

    @classmethod
    def from_cfg(cls, cfg) -> QuantSpec:
        """From the `quant` config node (DictConfig or dict); unknown keys fail with the closest known one."""
        d = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        known = [f.name for f in fields(cls)]
        for k in d:
            if k not in known:
                close = difflib.get_close_matches(k, known, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ValueError(f"quant.{k}: unknown field{hint}")
        return cls(**d)

    @property
    def tag(self) -> str:
        """'w4a8', 'w32a32' (FP): the bits part of run names."""
        return f"w{self.w_bits}a{self.a_bits}"


def _is_real(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)
