"""The PSAQ-ViT V2 generator, a documented reconstruction from its abstract (arXiv 2209.05687; its code was never
released): samples maximise KL(teacher ‖ quantized student) under the patch-similarity prior and TV, with no label
term; the student minimises it, step by step. `psaq_v2_batch` is a loop over `psaq_v2_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mimiq.quant import QuantSpec
from mimiq.quant.convert import build_student
from mimiq.synth.core import Batch, Context, Curves, step
from mimiq.synth.losses import psaq_v2_discrepancy, tv_prior_psaq
from mimiq.synth.psaq import PsaqState, psaq_augment, psaq_init, pse, teacher_av
from mimiq.utils.compile import compiled


@dataclass
class PsaqV2State(PsaqState):
    """A PSAQ-ViT V2 batch: PSAQ's pixel state (no labels) and the batch's own quantized student."""

    student: nn.Module | None = None  # fake-quantized copy of the teacher, trainable, restarted for every batch
    student_fn: Callable[[Tensor], Tensor] | None = None  # what runs it: itself, or compiled
    s_opt: torch.optim.Optimizer | None = None  # Adam on its weights and quantizer steps


def psaq_v2_init(ctx: Context, n: int, gen: torch.Generator) -> PsaqV2State:
    """A batch of n images at iteration 0: PSAQ's pixels and TV target (no labels), and a new student.

    The student, a fake-quantized copy of the teacher at the generator's fixed bits (the paper-code scheme
    otherwise), its activation quantizers initialised on the initial pixels, every parameter trainable.
    """
    g = ctx.gen_cfg
    state = PsaqV2State(**vars(psaq_init(ctx, n, gen, labels=False)))
    # lsq zero points initialised as in the paper code (quant.quirk_zero_point_off_grid)
    spec = QuantSpec(w_bits=g.student_w_bits, a_bits=g.student_a_bits, quirk_zero_point_off_grid=True)
    state.student = build_student(ctx.teacher, spec, state.x.detach())[0].train()
    state.student_fn = compiled(state.student) if ctx.compiled else state.student
    state.s_opt = torch.optim.Adam([p for p in state.student.parameters() if p.requires_grad], lr=g.student_lr)
    return state


def psaq_v2_step(ctx: Context, state: PsaqV2State, it: int, gen: torch.Generator) -> dict[str, Tensor]:
    """Iteration `it` of PSAQ-ViT V2, reconstructed (docs/method.md, Baselines): on x̃ (`psaq_augment`),
    a sample step  min_x  −w_kl·KL(T(x̃) ‖ S(x̃)) + w_pse·(−Σ H) + w_tv·|TV(x̃) − v|   (no label term), clamp, then
    a student step min_S  KL(T(x̃) ‖ S(x̃)) on the same detached x̃ (Adam on weights and quantizer steps).
    Returns the sample step's scalar terms loss, kl, pse, tv."""
    g = ctx.gen_cfg
    x_aug = psaq_augment(ctx, state, it, gen)
    t_logits, av = teacher_av(ctx, x_aug)
    kl = psaq_v2_discrepancy(ctx.forward(state.student_fn, x_aug), t_logits)
    l_pse, tv = pse(ctx, av, len(state.x)), (tv_prior_psaq(x_aug) - state.v).abs()
    loss = -g.w_kl * kl + g.w_pse * l_pse + g.w_tv * tv
    step(state.opt, loss)
    ctx.clamp_(state.x)
    # the student step; its zero_grad drops the student gradients of the sample loss
    step(state.s_opt, psaq_v2_discrepancy(ctx.forward(state.student_fn, x_aug.detach()), t_logits.detach()))
    return dict(loss=loss, kl=kl, pse=l_pse, tv=tv)


def psaq_v2_batch(ctx: Context, images: slice, gen: torch.Generator, curves: Curves) -> Batch:
    """PSAQ-ViT V2: `generator.iterations` of `psaq_v2_step` on a batch from `psaq_v2_init`. The student restarts
    for every batch, so shards stay independent (exact resume); only the samples are kept. Labels are the
    teacher's predictions on the final samples."""
    state = psaq_v2_init(ctx, images.stop - images.start, gen)
    for it in range(ctx.gen_cfg.iterations):
        curves.add(**psaq_v2_step(ctx, state, it, gen))
    with torch.no_grad():
        y = ctx.forward(ctx.teacher_fn, state.x).argmax(-1)
    return Batch(state.x.detach(), y, curves.stack())
