"""QAT loss math (KD + HSAD, docs/method.md; the PSAQ-ViT V2 discrepancy, arXiv 2209.05687) against float64 loops
and differently written torch computations."""

import math

import pytest
import torch

from mimiq.distill.losses import DISTANCES, hsad_loss, kd_loss, ssim_cs, weighted_terms
from mimiq.synth.losses import psaq_v2_discrepancy


def test_ssim_cs_matches_float64_loop():
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(2, 7, 3, generator=gen), torch.randn(2, 7, 3, generator=gen)
    v[0, :, 0] = 2 * u[0, :, 0] + 1  # perfectly correlated pair → close to 1
    got = ssim_cs(u, v, dim=1)
    assert got.shape == (2, 3)
    for a in range(2):
        for c in range(3):
            x, y = u[a, :, c].tolist(), v[a, :, c].tolist()
            mx, my = sum(x) / 7, sum(y) / 7
            vx = sum((xi - mx) ** 2 for xi in x) / 7
            vy = sum((yi - my) ** 2 for yi in y) / 7
            cxy = sum((xi - mx) * (yi - my) for xi, yi in zip(x, y, strict=True)) / 7
            expected = (2 * cxy + 0.03**2) / (vx + vy + 0.03**2)
            assert got[a, c].item() == pytest.approx(expected, abs=1e-6)
    assert got[0, 0] > 0.5


@pytest.mark.parametrize("distance", DISTANCES)
def test_hsad_zero_for_identical_positive_for_permuted_heads(distance):
    gen = torch.Generator().manual_seed(1)
    t = [torch.randn(2, 4, 11, 8, generator=gen) for _ in range(2)]
    assert hsad_loss(t, [x.clone() for x in t], drop_cls=True, distance=distance).item() == pytest.approx(0, abs=1e-6)
    permuted = [x[:, [1, 2, 3, 0]] for x in t]
    loss = hsad_loss(t, permuted, drop_cls=True, distance=distance).item()
    assert loss > (0.5 if distance == "ssim" else 1e-3)


def test_hsad_ssim_is_one_minus_mean_cs_along_tokens_with_equal_layer_weight():
    gen = torch.Generator().manual_seed(2)
    t = [torch.randn(2, 3, 11, 4, generator=gen), torch.randn(6, 3, 5, 4, generator=gen)]
    s = [x + 0.5 * torch.randn(x.shape, generator=gen) for x in t]
    per_layer = [1 - ssim_cs(a[:, :, 1:], b[:, :, 1:], dim=2).mean() for a, b in zip(t, s, strict=True)]
    assert hsad_loss(t, s, drop_cls=True).item() == pytest.approx(sum(per_layer).item() / 2, abs=1e-6)


def test_hsad_kl_is_teacher_to_student_over_tokens():
    gen = torch.Generator().manual_seed(3)
    t, s = torch.randn(2, 3, 6, 4, generator=gen), torch.randn(2, 3, 6, 4, generator=gen)
    p_t, p_s = t.softmax(dim=2), s.softmax(dim=2)
    per_row = (p_t * (p_t.log() - p_s.log())).sum(dim=2)  # (B, H, d): KL per (image, head, channel)
    expected = per_row.mean() / 6  # the code's elementwise-mean reduction
    assert hsad_loss([t], [s], drop_cls=False, distance="kl").item() == pytest.approx(expected.item(), rel=1e-5)


def test_hsad_drop_cls_ignores_cls_and_teacher_gets_no_gradient():
    t = torch.randn(2, 3, 9, 4, requires_grad=True)
    s = (t.detach() + 0.1 * torch.randn(2, 3, 9, 4)).requires_grad_()
    s_cls = s.detach().clone()
    s_cls[:, :, 0] += 5
    assert hsad_loss([t], [s_cls], drop_cls=True).item() == pytest.approx(hsad_loss([t], [s], True).item())
    assert hsad_loss([t], [s_cls], drop_cls=False).item() != pytest.approx(hsad_loss([t], [s], False).item())
    hsad_loss([t], [s], drop_cls=True).backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad[:, :, 1:].abs().sum() > 0
    assert s.grad[:, :, 0].abs().sum() == 0


def test_hsad_rejects_unknown_distance_and_bad_shapes():
    x = torch.randn(1, 2, 5, 3)
    with pytest.raises(ValueError, match=r"distill\.distance 'cosine'"):
        hsad_loss([x], [x], drop_cls=True, distance="cosine")
    with pytest.raises(ValueError, match="must be one"):
        hsad_loss([x], [x[:, :1]], drop_cls=True)


@pytest.mark.parametrize("temperature", [1.0, 5.0])
def test_kd_matches_direct_sum(temperature):
    gen = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 10, generator=gen, requires_grad=True), torch.randn(4, 10, generator=gen) * 3
    e_t, e_s = torch.exp(t / temperature), torch.exp(s / temperature)
    p_t, p_s = e_t / e_t.sum(1, keepdim=True), e_s / e_s.sum(1, keepdim=True)
    expected = (p_t * (torch.log(p_t) - torch.log(p_s))).sum() / 4 * temperature**2
    loss = kd_loss(s, t, temperature)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert kd_loss(t, t, temperature).item() == pytest.approx(0, abs=1e-6)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_kd_detaches_teacher_but_psaq_v2_does_not():
    s, t = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    kd_loss(s, t, 5.0).backward()
    assert t.grad is None
    d = psaq_v2_discrepancy(s, t)
    p_t = torch.softmax(t.detach(), 1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s.detach(), 1))).sum(1).mean()
    assert d.item() == pytest.approx(expected.item(), rel=1e-5) and d.item() > 0
    d.backward()
    assert t.grad is not None and t.grad.abs().sum() > 0
    assert psaq_v2_discrepancy(t, t).item() == pytest.approx(0, abs=1e-6)
    assert not math.isnan(d.item())


def test_weighted_terms_skips_zero_weights_and_refuses_all_zero():
    calls = []

    def loss(v):
        return lambda: calls.append(v) or torch.tensor(v)

    terms = weighted_terms({"a": (2.0, loss(1.5)), "b": (0.0, loss(9.0)), "c": (0.5, loss(4.0))}, "x.a, x.b, x.c")
    assert list(terms) == ["a", "c", "total"] and calls == [1.5, 4.0]  # "b" is never computed
    assert terms["a"].item() == 3.0 and terms["c"].item() == 2.0 and terms["total"].item() == 5.0
    with pytest.raises(ValueError, match=r"every loss weight \(x.a, x.b\) is 0"):
        weighted_terms({"a": (0.0, loss(1.0)), "b": (0, loss(1.0))}, "x.a, x.b")
