"""`compile=on` against eager on the tiny ViT (CPU): one step's values and gradients, a short set, a short QAT.

A compiled step is not bit-identical: inductor fuses and reorders float ops, and traces the composite fake-quant
path where eager runs the fused autograd functions. Tolerances (measured on this CPU, fp32, about 10x below them):
loss terms rel 1e-5 (PSAQ's entropy rel 1e-3: its KDE kernel, bandwidth 0.01, scales differences by 1/h² = 1e4);
pixel gradients 1e-5 of their largest entry; the QAT gradients of all student parameters together rel 1e-4 in L2
norm, each tensor within 1e-4 of the largest entry (the zero-point gradients are rounding noise, ~1e-12, in both);
a short set's label agreement within one image; a short QAT's top-1 within one evaluation image.

Compilation is slow: the models are built once per module, every step uses batch 8 (one compiled graph per
variant, shared through Dynamo's cache), and inductor's on-disk cache makes reruns fast.
"""

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mimiq.config import compose
from mimiq.distill import qat as distill_qat
from mimiq.distill.qat import qat_steps
from mimiq.evaluate.classification import evaluate
from mimiq.models.attention import capture
from mimiq.perf import steps as perf_steps
from mimiq.synth import mimiq as synth_mimiq
from mimiq.synth import psaq as synth_psaq
from mimiq.synth.core import build_context, generation_steps
from mimiq.synth.generate import SyntheticSet, synthesize_or_load
from mimiq.task.classification import Classification
from mimiq.utils.compile import check_compile_cfg, compiled, use_compile

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
BATCH = 8


def _cfg(*overrides: str):
    return compose(
        ["debug=tiny", "model=vit_test", f"generator.batch_size={BATCH}", f"qat.batch_size={BATCH}", *overrides]
    )


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    return perf_steps.build_models(_cfg(f"qat.calib_size={BATCH}"), CPU)


@pytest.mark.parametrize(("generator", "module", "rtol"), [("mimiq", synth_mimiq, 1e-5), ("psaq", synth_psaq, 1e-3)])
def test_one_compiled_generation_step_matches_eager(models, generator, module, rtol):
    out = {}
    for mode in ("off", "on"):
        cfg = _cfg(f"generator={generator}", f"compile={mode}")
        ctx = build_context(models.teacher, cfg, CPU, models.data_config)
        assert ctx.compiled == (mode == "on")
        gen = torch.Generator().manual_seed(0)
        state = getattr(module, f"{generator}_init")(ctx, BATCH, gen)
        terms = getattr(module, f"{generator}_step")(ctx, state, 0, gen)
        out[mode] = ({k: v.item() for k, v in terms.items()}, state.x.grad.clone())
    (t_eager, g_eager), (t_comp, g_comp) = out["off"], out["on"]
    assert t_eager.keys() == t_comp.keys()
    for k in t_eager:
        assert t_comp[k] == pytest.approx(t_eager[k], rel=rtol), k
    assert g_eager.abs().max() > 0
    torch.testing.assert_close(g_comp, g_eager, rtol=0, atol=1e-5 * g_eager.abs().max().item())


def _qat_grads(models, compile: bool) -> tuple[dict, dict]:
    student = copy.deepcopy(models.student)
    opt = distill_qat.build_optimizer([p for p in student.parameters() if p.requires_grad], models.cfg.optim)
    model, teacher = (compiled(student), compiled(models.teacher)) if compile else (student, models.teacher)
    task = Classification(models.cfg)
    terms = distill_qat.qat_step(model, teacher, task, models.x, models.y, opt, True, step=False)
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in terms.items()}, grads


def test_one_compiled_qat_step_matches_eager(models):
    (t_eager, g_eager), (t_comp, g_comp) = _qat_grads(models, False), _qat_grads(models, True)
    assert t_eager.keys() == t_comp.keys() and g_eager.keys() == g_comp.keys() and len(g_eager) > 20
    for k in t_eager:
        assert t_comp[k] == pytest.approx(t_eager[k], rel=1e-3), k
    flat_e, flat_c = (torch.cat([g.flatten() for g in gs.values()]) for gs in (g_eager, g_comp))
    assert (flat_c - flat_e).norm() <= 1e-4 * flat_e.norm()
    scale = flat_e.abs().max().item()
    for n in g_eager:
        torch.testing.assert_close(g_comp[n], g_eager[n], rtol=0, atol=1e-4 * scale, msg=n)


def _count_compiles(monkeypatch, module) -> list[int]:
    calls = [0]

    def counting(model):
        calls[0] += 1
        return compiled(model)

    monkeypatch.setattr(module, "compiled", counting)
    return calls


def test_a_short_compiled_set_agrees_with_eager(models, tmp_path, monkeypatch):
    from mimiq.synth import core

    compiles = _count_compiles(monkeypatch, core)
    meta = {}
    for mode in ("off", "on"):
        cfg = _cfg(f"compile={mode}", f"paths.cache_dir={tmp_path / mode}", "generator.num_images=16")
        cfg.generator.iterations = 8  # a short set (debug=tiny: 3)
        meta[mode] = synthesize_or_load(models.teacher, cfg, CPU).meta
    assert compiles[0] == 1  # the teacher of the compile=on set
    agreement = {m: meta[m]["synth_label_agreement"] for m in meta}
    assert agreement["off"] > 0 and abs(agreement["on"] - agreement["off"]) <= 1 / 16, agreement
    for k in ("ih", "ce"):
        assert meta["on"]["loss_curves"][k][-1] == pytest.approx(meta["off"]["loss_curves"][k][-1], rel=1e-2), k


def test_a_short_compiled_qat_reaches_the_eager_top1(models, tmp_path, monkeypatch):
    compiles = _count_compiles(monkeypatch, distill_qat)
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(16, 3, 32, 32, generator=gen)
    with torch.no_grad():
        labels = models.teacher(images).argmax(-1)
        eval_x = torch.randn(64, 3, 32, 32, generator=gen)
        eval_y = models.teacher(eval_x).argmax(-1)
    loader = DataLoader(TensorDataset(eval_x, eval_y), batch_size=32)
    top1 = {}
    for mode in ("off", "on"):
        cfg = _cfg(f"compile={mode}", "qat.epochs=2", "generator.num_images=16")
        student = copy.deepcopy(models.student)
        done = distill_qat.train_qat(
            student,
            models.teacher,
            SyntheticSet(images, labels, {}),
            Classification(cfg),
            cfg,
            CPU,
            tmp_path / mode,
            evaluate=lambda s: evaluate(s, loader, CPU)["top1"],
        )
        assert done["steps"] == 4
        top1[mode] = done["top1"]
    assert compiles[0] == 2  # the student and the teacher of the compile=on run
    assert abs(top1["on"] - top1["off"]) <= 100 / 64, top1


def test_the_compile_option():
    cfg = compose(["compile=auto"])
    steps = cfg.compile_min_steps.cpu
    assert not use_compile(cfg, CPU, steps - 1) and use_compile(cfg, CPU, steps)
    assert use_compile(compose(["compile=on"]), CPU, 1) and not use_compile(compose(["compile=off"]), CPU, 10**9)
    assert not use_compile(compose(["compile=auto", "~compile_min_steps.cpu"]), CPU, 10**9)  # no threshold: off
    assert not use_compile(compose(["compile=auto", "compile_min_steps.cpu=null"]), CPU, 10**9)
    mini = compose(["model=vit_mini"])  # the mini budget's stages stay eager: below the measured break-even
    assert not use_compile(mini, CPU, generation_steps(mini)) and not use_compile(mini, CPU, qat_steps(mini))
    with pytest.raises(ValueError, match="compile must be one of off, on, auto"):
        check_compile_cfg(compose(["compile=yes"]))
    with pytest.raises(ValueError, match=r"compile_min_steps.cpu must be an integer >= 0"):
        check_compile_cfg(compose(["compile_min_steps.cpu=-1"]))


@pytest.mark.parametrize(("which", "student"), [("matmul_qk", False), ("matmul_av", False), ("matmul_av", True)])
def test_the_attention_capture_compiles_in_one_graph(models, which, student):
    """No hook, no graph break: the whole forward (the fake-quantized student's too) is one Dynamo graph, and the
    capture list is filled by the compiled forward."""
    model = models.student if student else models.teacher
    torch._dynamo.reset()
    with capture(model, which) as outs:
        explained = torch._dynamo.explain(model)(models.x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert len(outs) == models.cfg.model.arch.depth and all(o.shape[0] == BATCH for o in outs)
