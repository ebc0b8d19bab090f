"""Quantizer modules: the state (steps, zero points, ranges, flags) lives here, the math in `functional`.

Every quantizer maps a tensor to its fake-quantized copy of the same shape and has:
  * `bits`, and a granularity: one step per tensor (`axis=None`) or `channels` steps along `axis`;
  * `enabled` (a plain attribute; False = identity, for FP checks and for switching quantization on late);
  * two persistent bool buffers, `is_initialized` and `signed`, so that state_dict -> load_state_dict keeps
    the calibration result; Python mirrors of both (`_ready`, `_signed`) keep the forward free of GPU syncs.

Activation quantizers initialise from the first batch they see. Learned ones (LSQ, LSQ+) must be initialised
by a no-grad forward (`mimiq.quant.calibrate`) and raise `QuantizerNotInitializedError` in a grad-enabled
forward before that: initialising inside a training step would silently depend on that step's batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from mimiq.quant.functional import (
    EPS,
    asymmetric_qparams,
    fake_quantize,
    lsq_plus_quantize,
    lsq_quantize,
    minmax_symmetric_ste,
    qrange,
    reduce_except,
)

PAPER_SIGNED_THRESHOLD = 1e-5  # the paper code: signed iff first-batch min < 1e-5 (flags nearly everything)


class QuantizerNotInitializedError(RuntimeError):
    pass


class Quantizer(nn.Module):
    """Base class: bits, granularity, `enabled`, and the persistent `is_initialized` / `signed` flags.

    Args:
        bits: grid width, 2..16.
        channels: number of steps (1 per tensor; C for per-channel / per-head).
        axis: the axis of the input the steps run along; None = per tensor.
        signed: initial signedness (activation quantizers decide it from the first batch).
    """

    kind = "base"  # short name in the manifest
    needs_calibration = False  # True: a grad-enabled forward before initialisation raises

    def __init__(self, bits: int, channels: int = 1, axis: int | None = None, signed: bool = True):
        super().__init__()
        if not 2 <= bits <= 16:
            raise ValueError(f"{type(self).__name__}: bits={bits} must be 2..16")
        if (axis is None) != (channels == 1):
            raise ValueError(f"{type(self).__name__}: channels={channels} and axis={axis} disagree")
        self.bits, self.channels, self.axis, self.enabled = bits, channels, axis, True
        self.register_buffer("is_initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(signed))
        self._ready, self._signed = False, signed

    @property
    def grid(self) -> tuple[int, int]:
        """(qmin, qmax) of the integer grid."""
        return qrange(self.bits, self._signed)

    @property
    def signedness(self) -> str:
        return "signed" if self._signed else "unsigned"

    @property
    def granularity(self) -> str:
        if self.axis is None:
            return "tensor"
        return f"{ {0: 'channel', 1: 'head'}.get(self.axis, f'axis{self.axis}') }({self.channels})"

    def _set_flags(self, ready: bool, signed: bool) -> None:
        self._ready, self._signed = ready, signed
        self.is_initialized.fill_(ready)
        self.signed.fill_(signed)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._ready, self._signed = bool(self.is_initialized), bool(self.signed)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Sets the state from `x` (the first batch, or the weight) and marks the quantizer initialised."""
        self._set_flags(True, self._signed)

    def quantize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if not self._ready:
            if self.needs_calibration and torch.is_grad_enabled():
                raise QuantizerNotInitializedError(
                    f"{type(self).__name__}({self.extra_repr()}) is used in a grad-enabled forward before "
                    "initialisation: run mimiq.quant.calibrate(model, batch) first (a no-grad forward)"
                )
            self.initialize(x)
        return self.quantize(x)

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, {self.signedness}, granularity={self.granularity}, "
            f"initialized={self._ready}, enabled={self.enabled}"
        )


# --- weights ------------------------------------------------------------------------------------------------


class MinMaxWeightQuantizer(Quantizer):
    """The paper code's default (`wq_mode minmax`): symmetric, step 2*max|w|/(2^b-1) per output channel,
    recomputed from the current weight at every forward; nothing learned. The gradient to w is the identity
    everywhere (the paper code's STE, which also passes through the clipped positive extreme)."""

    kind = "minmax"

    def __init__(self, bits: int, channels: int = 1, axis: int | None = None):
        super().__init__(bits, channels, axis, signed=True)
        self._set_flags(True, True)  # stateless

    def quantize(self, w: Tensor) -> Tensor:
        return minmax_symmetric_ste(w, self.bits, self.axis)


class LSQWeightQuantizer(Quantizer):
    """LSQ weights (`wq_mode lsq`): a learned step per output channel, init 2*mean|w_c|/sqrt(Qp),
    step-gradient scale 1/sqrt(numel(w)*Qp).

    Args:
        paper_qmin: the paper code's grid [-(2^b-1), 2^(b-1)-1] (-15..7 at 4 bit), not [-2^(b-1), 2^(b-1)-1].
        scalar_init: the paper code's init of every channel's step from the whole-tensor mean|w|.
    """

    kind = "lsq"
    needs_calibration = True

    def __init__(
        self, bits: int, channels: int = 1, axis: int | None = None, paper_qmin: bool = False, scalar_init: bool = False
    ):
        super().__init__(bits, channels, axis, signed=True)
        self.paper_qmin, self.scalar_init = paper_qmin, scalar_init
        self.step = nn.Parameter(torch.ones(channels))
        self.register_buffer("g", torch.tensor(1.0))

    @property
    def grid(self) -> tuple[int, int]:
        qmin, qmax = qrange(self.bits, True)
        return (-(2**self.bits - 1) if self.paper_qmin else qmin), qmax

    @torch.no_grad()
    def initialize(self, w: Tensor) -> None:
        qmax = self.grid[1]
        mean = w.abs().mean() if self.scalar_init else reduce_except(w.abs(), self.axis, "mean")
        self.step.copy_((2 * mean / math.sqrt(qmax)).clamp_min(EPS).expand_as(self.step))  # EPS: all-zero rows
        self.g.fill_(1.0 / math.sqrt(w.numel() * qmax))
        super().initialize(w)

    def quantize(self, w: Tensor) -> Tensor:
        return lsq_quantize(w, self.step, None, *self.grid, self.g, self.axis)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, paper_qmin={self.paper_qmin}, scalar_init={self.scalar_init}"


# --- activations --------------------------------------------------------------------------------------------


class ActQuantizer(Quantizer):
    """Base of the activation quantizers: signedness is decided on the first batch, signed iff min(x) <
    `signed_threshold` (0: correct; the paper code used 1e-5, which flags even softmax probabilities signed).

    Args:
        g_factor: multiplies the LSQ step-gradient scale (the paper code's `lsq_g_scale`).
    """

    def __init__(
        self,
        bits: int,
        channels: int = 1,
        axis: int | None = None,
        signed_threshold: float = 0.0,
        g_factor: float = 1.0,
    ):
        super().__init__(bits, channels, axis, signed=True)
        self.signed_threshold, self.g_factor = signed_threshold, g_factor

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        self._set_flags(False, bool(x.min() < self.signed_threshold))
        self._init_state(x.detach())
        super().initialize(x)

    def _init_state(self, x: Tensor) -> None:
        raise NotImplementedError

    @property
    def signedness(self) -> str:
        """signed | unsigned | auto(min<t) before the first batch."""
        return super().signedness if self._ready else f"auto(min<{self.signed_threshold:g})"

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", g_factor={self.g_factor:g}" if self.needs_calibration else "")


class LSQActQuantizer(ActQuantizer):
    """The paper code's default (`aq_mode lsq`, `QuantAct_lsq`): learned step a and zero point z, init from
    the first batch a = 2*mean|x|/sqrt(Qp), z = 0.1*(min x - a*Qp) (docs/method.md); the step gradient is
    scaled by g = g_factor/sqrt(n*Qp), n = elements per step in that first batch; the zero point's is not.

    A first batch with min x < 10*(qmin - 0.5) + a*Qp (large negative outliers) puts round(z) below qmin: 0 is
    then off the grid and every input under a*(qmin - round(z)) reads as that value. `zero_point_on_grid` clamps
    the initial z to [qmin, qmax] (0 on the grid); False, the default, is the paper code's init.
    `zero_point_from_min` False starts z at 0 instead (LSQ as Esser et al.: a grid around 0, the zero point learned
    from there); True, the default, is the paper code's init from the minimum."""

    kind = "lsq"
    needs_calibration = True

    def __init__(self, *args, zero_point_on_grid: bool = False, zero_point_from_min: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.zero_point_on_grid, self.zero_point_from_min = zero_point_on_grid, zero_point_from_min
        self.step = nn.Parameter(torch.ones(self.channels))
        self.zero_point = nn.Parameter(torch.zeros(self.channels))
        self.register_buffer("g", torch.tensor(1.0))

    def _init_state(self, x: Tensor) -> None:
        qmin, qmax = self.grid
        self.step.copy_((2 * reduce_except(x.abs(), self.axis, "mean") / math.sqrt(qmax)).clamp_min(EPS))
        if self.zero_point_from_min:
            self.zero_point.copy_(0.1 * (reduce_except(x, self.axis, "amin") - self.step * qmax))
        else:
            self.zero_point.zero_()
        if self.zero_point_on_grid:
            self.zero_point.clamp_(qmin, qmax)
        self.g.fill_(self.g_factor / math.sqrt(x.numel() / self.channels * qmax))

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + (", zero_point_on_grid" if self.zero_point_on_grid else "")
            + ("" if self.zero_point_from_min else ", zero_point_at_0")
        )

    def quantize(self, x: Tensor) -> Tensor:
        return lsq_quantize(x, self.step, self.zero_point, *self.grid, self.g, self.axis)


class LSQPlusActQuantizer(ActQuantizer):
    """LSQ+ (Bhalgat et al. 2020): learned step a and real offset b (both gradients scaled by g), init from
    the first batch's range: a = (max - min)/(qmax - qmin), b = min - a*qmin."""

    kind = "lsq_plus"
    needs_calibration = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step = nn.Parameter(torch.ones(self.channels))
        self.offset = nn.Parameter(torch.zeros(self.channels))
        self.register_buffer("g", torch.tensor(1.0))

    def _init_state(self, x: Tensor) -> None:
        qmin, qmax = self.grid
        lo, hi = reduce_except(x, self.axis, "amin"), reduce_except(x, self.axis, "amax")
        self.step.copy_(((hi - lo) / (qmax - qmin)).clamp_min(EPS))
        self.offset.copy_(lo - self.step * qmin)
        self.g.fill_(self.g_factor / math.sqrt(x.numel() / self.channels * qmax))

    def quantize(self, x: Tensor) -> Tensor:
        return lsq_plus_quantize(x, self.step, self.offset, *self.grid, self.g, self.axis)


class EMAMinMaxActQuantizer(ActQuantizer):
    """The paper code's `aq_mode minmax` (`QuantAct`): asymmetric, range = bias-corrected EMA (momentum
    `beta`) of the per-batch min/max. Like BatchNorm statistics, the range is updated by every forward in
    training mode and frozen in eval mode (the first batch initialises it in either mode). Nothing is learned;
    the gradient to x is the clipped STE."""

    kind = "ema_minmax"

    def __init__(self, *args, beta: float = 0.9, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta
        self.register_buffer("ema_min", torch.zeros(self.channels))
        self.register_buffer("ema_max", torch.zeros(self.channels))
        self.register_buffer("num_batches", torch.tensor(0))

    def _init_state(self, x: Tensor) -> None:
        self.observe(x)

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """One EMA step of the running min/max towards this batch's."""
        self.ema_min.lerp_(reduce_except(x, self.axis, "amin"), 1 - self.beta)
        self.ema_max.lerp_(reduce_except(x, self.axis, "amax"), 1 - self.beta)
        self.num_batches += 1

    def range(self) -> tuple[Tensor, Tensor]:
        """Bias-corrected running (min, max), each (channels,)."""
        debias = 1 - self.beta**self.num_batches
        return self.ema_min / debias, self.ema_max / debias

    def forward(self, x: Tensor) -> Tensor:
        if self.enabled and self._ready and self.training:
            self.observe(x)
        return super().forward(x)

    def quantize(self, x: Tensor) -> Tensor:
        step, zero = asymmetric_qparams(*self.range(), self.bits, self._signed)
        return fake_quantize(x, step, zero, *self.grid, self.axis)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta={self.beta}"


ACT_QUANTIZERS = {q.kind: q for q in (LSQActQuantizer, LSQPlusActQuantizer, EMAMinMaxActQuantizer)}
WEIGHT_QUANTIZERS = {q.kind: q for q in (MinMaxWeightQuantizer, LSQWeightQuantizer)}
