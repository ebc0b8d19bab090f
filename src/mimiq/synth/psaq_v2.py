"""The PSAQ-ViT V2 generator, a documented reconstruction from its abstract (arXiv 2209.05687; its code was never
released): samples maximise KL(teacher ‖ quantized student) under the patch-similarity prior and TV, with no label
term; the student minimises it, step by step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mimiq.quant import QuantSpec
from mimiq.quant.convert import build_student
from mimiq.synth.core import Batch, Context, Curves, init_pixels, step
from mimiq.synth.losses import psaq_v2_discrepancy, tv_prior_psaq
from mimiq.synth.psaq import psaq_rounds, pse, tv_target


def psaq_v2_batch(ctx: Context, images: slice, gen: torch.Generator, curves: Curves) -> Batch:
    """PSAQ-ViT V2, reconstructed (docs/method.md, Baselines): alternate, every step,
    a sample step  min_x  −w_kl·KL(T(x̃) ‖ S(x̃)) + w_pse·(−Σ H) + w_tv·|TV(x̃) − v|   (no label term), and
    a student step min_S  KL(T(x̃) ‖ S(x̃)) on the same detached x̃ (Adam on weights and quantizer steps).

    The student, a fake-quantized copy of the teacher at the generator's fixed bits (the paper-code scheme
    otherwise), its activation quantizers initialised on the initial pixels, every parameter trainable, restarts
    for every batch, so shards stay independent (exact resume); only the samples are kept. Labels are the
    teacher's predictions on the final samples.
    """
    g, n = ctx.gen_cfg, images.stop - images.start
    x = init_pixels(ctx, n, gen)
    v = tv_target(ctx, n, gen)
    spec = QuantSpec(w_bits=g.student_w_bits, a_bits=g.student_a_bits)
    student = build_student(ctx.teacher, spec, x.detach())[0].train()  # before the teacher's hooks: none copied
    s_opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=g.student_lr)

    seen: dict[str, Tensor] = {}  # the sample step's x̃ and teacher logits, for the student step

    def loss_fn(x_aug: Tensor, av: list[Tensor]) -> Tensor:
        t_logits = ctx.forward(ctx.teacher, x_aug)
        kl = psaq_v2_discrepancy(ctx.forward(student, x_aug), t_logits)
        l_pse, tv = pse(ctx, av, n), (tv_prior_psaq(x_aug) - v).abs()
        loss = -g.w_kl * kl + g.w_pse * l_pse + g.w_tv * tv
        seen.update(x_aug=x_aug.detach(), t_logits=t_logits.detach())
        curves.add(loss=loss, kl=kl, pse=l_pse, tv=tv)
        return loss

    def student_step() -> None:  # zero_grad drops the student gradients of the sample loss
        step(s_opt, psaq_v2_discrepancy(ctx.forward(student, seen["x_aug"]), seen["t_logits"]))

    psaq_rounds(ctx, x, gen, loss_fn, student_step)
    with torch.no_grad():
        y = ctx.forward(ctx.teacher, x).argmax(-1)
    return Batch(x.detach(), y, curves.stack())
