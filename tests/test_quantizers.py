"""Quantizer modules: init rules, signedness, granularity shapes, error vs bits, flags and state_dict round trip."""

import math

import pytest
import torch

from mimiq.quant import (
    EMAMinMaxActQuantizer,
    LSQActQuantizer,
    LSQPlusActQuantizer,
    LSQWeightQuantizer,
    MinMaxWeightQuantizer,
    QuantizerNotInitializedError,
)
from mimiq.quant.quantizers import PAPER_SIGNED_THRESHOLD

torch.manual_seed(0)
ACT = [LSQActQuantizer, LSQPlusActQuantizer, EMAMinMaxActQuantizer]


def _init(q, x):
    with torch.no_grad():
        q(x)
    return q


@pytest.mark.parametrize("shape", [(24, 40), (8, 3, 4, 4)])
def test_minmax_weight_per_channel_grid_and_identity_gradient(shape):
    w = torch.randn(shape, requires_grad=True)
    q = MinMaxWeightQuantizer(4, shape[0], axis=0)
    w_hat = q(w)
    s = 15 / (2 * w.detach().abs().flatten(1).amax(1)).view(-1, *[1] * (len(shape) - 1))
    q_int = (w_hat * s).detach()
    assert torch.allclose(q_int, q_int.round(), atol=1e-4)
    assert q_int.round().min() == -8 and q_int.round().max() == 7
    w_hat.sum().backward()
    assert torch.equal(w.grad, torch.ones(shape))  # the paper code's STE: identity, also at the clipped +max
    assert q.is_initialized and q.granularity == f"channel({shape[0]})"


@pytest.mark.parametrize("cls,ratio", [(MinMaxWeightQuantizer, 100), (LSQWeightQuantizer, 10)])
def test_weight_error_shrinks_with_bits(cls, ratio):
    w = torch.randn(64, 128) * 0.02
    errs = {}
    for bits in (4, 8):
        q = cls(bits, 64, axis=0)
        if isinstance(q, LSQWeightQuantizer):
            q.initialize(w)
        errs[bits] = (q(w) - w).pow(2).mean().item()
    assert errs[8] < errs[4] / ratio  # min/max: ~256x less; LSQ's 2*mean/sqrt(Qp) init clips less at 8 bit


def test_lsq_weight_init_and_paper_quirks():
    w = torch.randn(4, 50) * torch.tensor([[0.1], [1.0], [2.0], [5.0]])
    q = LSQWeightQuantizer(4, 4, axis=0)
    q.initialize(w)
    torch.testing.assert_close(q.step.data, 2 * w.abs().mean(1) / math.sqrt(7))  # per channel
    assert q.grid == (-8, 7) and q.g.item() == pytest.approx(1 / math.sqrt(200 * 7))
    quirk = LSQWeightQuantizer(4, 4, axis=0, paper_qmin=True, scalar_init=True)
    quirk.initialize(w)
    torch.testing.assert_close(quirk.step.data, (2 * w.abs().mean() / math.sqrt(7)).expand(4))
    assert quirk.grid == (-15, 7)
    wq = (quirk(w * 10) / quirk.step.data[:, None]).detach().round()
    assert wq.min() == -15 and wq.max() == 7
    w.requires_grad_()
    q(w).sum().backward()
    assert q.step.grad.shape == (4,) and q.step.grad.abs().sum() > 0


def test_lsq_act_init_from_first_batch():
    x = torch.randn(4, 10, 16) * 2 + 0.5
    q = _init(LSQActQuantizer(4, g_factor=0.01), x)
    step = 2 * x.abs().mean() / math.sqrt(7)  # signed: Qp = 7
    torch.testing.assert_close(q.step.data, step.view(1))
    torch.testing.assert_close(q.zero_point.data, (0.1 * (x.min() - step * 7)).view(1))
    assert q.g.item() == pytest.approx(0.01 / math.sqrt(x.numel() * 7))
    assert bool(q.is_initialized) and bool(q.signed) and q.grid == (-8, 7)


def test_lsq_act_zero_point_off_the_grid_in_the_paper_init_and_clamped_onto_it():
    """A first batch with a large negative outlier: the paper init's z = 0.1 (min x - a Qp) rounds below qmin, so 0
    reads as a nonzero value; `zero_point_on_grid` clamps z to [qmin, qmax] and 0 reads as 0 (float64 reference)."""
    x = torch.linspace(-1.0, 1.0, 640, dtype=torch.float64).view(4, 10, 16)
    x[0, 0, 0] = -100.0  # an outlier channel's value
    a = 2 * x.abs().mean().item() / math.sqrt(7)
    z = 0.1 * (x.min().item() - a * 7)  # float64, the paper code's formula
    assert round(z) < -8  # off the 4-bit signed grid [-8, 7]
    paper = _init(LSQActQuantizer(4), x)
    clamped = _init(LSQActQuantizer(4, zero_point_on_grid=True), x)
    assert paper.zero_point.item() == pytest.approx(z) and clamped.zero_point.item() == -8.0
    assert clamped.step.item() == pytest.approx(a) and paper.step.item() == pytest.approx(a)
    zero = torch.zeros(3, dtype=torch.float64)

    def fake_quant(value: float, zq: int) -> float:  # x_hat = (round(clamp(x / a + zq, -8, 7)) - zq) * a
        return (round(min(max(value / a + zq, -8), 7)) - zq) * a

    with torch.no_grad():
        assert paper(zero).tolist() == pytest.approx([fake_quant(0.0, round(z))] * 3)
        assert paper(zero).abs().min().item() > 0.5 * a  # 0 is not representable
        assert clamped(zero).tolist() == [0.0, 0.0, 0.0]
    assert "zero_point_on_grid" in repr(clamped) and "zero_point_on_grid" not in repr(paper)


def test_lsq_act_zero_point_at_0_keeps_a_grid_around_0_whatever_the_minimum():
    """`zero_point_from_min=False`: z starts at 0 (the step is the same), so the grid is [-8 a, 7 a] and an outlier
    minimum no longer shifts it (float64 reference of the fake-quant)."""
    x = torch.linspace(-1.0, 1.0, 640, dtype=torch.float64).view(4, 10, 16)
    x[0, 0, 0] = -100.0
    a = 2 * x.abs().mean().item() / math.sqrt(7)
    q = _init(LSQActQuantizer(4, zero_point_from_min=False), x)
    assert q.zero_point.item() == 0.0 and q.step.item() == pytest.approx(a)
    v = torch.tensor([-100.0, -0.9, -0.2, 0.0, 0.3, 5.0], dtype=torch.float64)
    want = [round(min(max(t / a, -8), 7)) * a for t in v.tolist()]
    with torch.no_grad():
        assert q(v).tolist() == pytest.approx(want)
    paper = _init(LSQActQuantizer(4), x)  # from the minimum: the same -0.9 is clipped to the grid's lowest value
    with torch.no_grad():
        assert paper(v)[1].item() > q(v)[1].item() + a
    assert "zero_point_at_0" in repr(q) and "zero_point_at_0" not in repr(paper)


@pytest.mark.parametrize("cls", ACT)
def test_signedness_rule_and_paper_quirk(cls):
    probs = (torch.randn(2, 3, 50, 50) * 4).softmax(-1)  # 0 < min < 1e-5
    gelu = torch.nn.functional.gelu(torch.randn(2, 8, 16))  # min ~ -0.17
    assert _init(cls(4), probs).signedness == "unsigned"
    assert _init(cls(4), gelu).signedness == "signed"
    assert _init(cls(4, signed_threshold=PAPER_SIGNED_THRESHOLD), probs).signedness == "signed"  # the paper bug
    assert cls(4).signedness == "auto(min<0)"
    assert _init(cls(4), probs).grid == (0, 15)


@pytest.mark.parametrize("cls", [LSQActQuantizer, LSQPlusActQuantizer])
def test_learned_quantizer_raises_in_training_before_init(cls):
    q = cls(4)
    x = torch.randn(8, 16, requires_grad=True)
    with pytest.raises(QuantizerNotInitializedError, match="calibrate"):
        q(x)
    q.enabled = False
    assert q(x) is x  # disabled = identity, no init needed
    q.enabled = True
    _init(q, x)
    y = q(x)
    y.sum().backward()
    assert q.step.grad is not None and x.grad is not None


@pytest.mark.parametrize("cls", ACT)
def test_act_output_on_grid_and_close_for_8_bit(cls):
    x = torch.randn(4, 64, 32)
    errs = {b: (_init(cls(b), x)(x) - x).pow(2).mean().item() for b in (4, 8)}
    assert errs[8] < errs[4] / 10
    q = _init(cls(4), x)
    xq = q(x).detach()
    assert xq.unique().numel() <= 16


def test_lsq_plus_init_covers_the_range():
    x = torch.rand(1000) * 3 - 1
    q = _init(LSQPlusActQuantizer(4), x)
    assert (q(x) - x).abs().max() <= q.step.item() / 2 + 1e-6
    assert q.offset.item() == pytest.approx(x.min().item() - q.step.item() * q.grid[0], abs=1e-6)


def test_ema_minmax_tracks_in_training_and_freezes_in_eval():
    q = EMAMinMaxActQuantizer(4, beta=0.9).eval()
    x1, x2 = torch.randn(100), torch.randn(100) * 3
    _init(q, x1)
    lo, hi = q.range()
    torch.testing.assert_close((lo, hi), (x1.min().view(1), x1.max().view(1)))  # bias-corrected, 1 batch
    _init(q, x2)
    torch.testing.assert_close(q.range(), (lo, hi))  # eval: frozen
    q.train()
    _init(q, x2)
    expect = (0.9 * 0.1 * x1.max() + 0.1 * x2.max()) / (1 - 0.9**2)
    torch.testing.assert_close(q.range()[1], expect.view(1))
    assert q.num_batches.item() == 2


@pytest.mark.parametrize("cls", ACT)
def test_per_head_act_quantizer_shapes(cls):
    x = torch.randn(2, 3, 9, 8) * torch.tensor([0.05, 0.3, 1.0]).view(1, 3, 1, 1)  # (B, H, N, d)
    q = _init(cls(4, channels=3, axis=1), x)
    state = {k: v for k, v in q.state_dict().items() if v.dim() == 1}
    assert state and all(v.shape == (3,) for v in state.values())
    assert q.granularity == "head(3)"

    def rel_err(q, h):
        return ((q(x) - x)[:, h].pow(2).mean() / x[:, h].pow(2).mean()).item()

    assert max(rel_err(q, h) for h in range(3)) < 0.1  # every head gets its own step, whatever its scale
    assert rel_err(_init(cls(4), x), 0) > 0.3  # one step per tensor drowns the small head
    with pytest.raises(ValueError, match="disagree"):
        cls(4, channels=3, axis=None)


@pytest.mark.parametrize("cls", ACT)
def test_state_dict_round_trip_keeps_init_flags_and_signedness(cls):
    probs = torch.randn(2, 3, 8, 8).softmax(-1)
    q = _init(cls(4), probs)
    fresh = cls(4)
    assert not fresh.is_initialized and fresh.signedness.startswith("auto")
    fresh.load_state_dict(q.state_dict())
    assert fresh.is_initialized and fresh.signedness == "unsigned" and fresh.grid == (0, 15)
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(fresh(x), q(x))  # and no re-initialisation from this new batch


def test_weight_quantizer_state_dict_round_trip():
    w = torch.randn(6, 10)
    q = LSQWeightQuantizer(4, 6, axis=0, paper_qmin=True)
    q.initialize(w)
    fresh = LSQWeightQuantizer(4, 6, axis=0, paper_qmin=True)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh(w), q(w)) and fresh.is_initialized


def test_extra_repr_and_bits_validation():
    r = repr(_init(LSQActQuantizer(3, g_factor=0.01), torch.rand(10)))
    assert "bits=3" in r and "unsigned" in r and "initialized=True" in r and "g_factor=0.01" in r
    for bits in (1, 17):
        with pytest.raises(ValueError, match=f"bits={bits}"):
            LSQActQuantizer(bits)
