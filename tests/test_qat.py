"""QAT: only the student learns, one step is `qat_step`, checkpoints resume bit-exactly, corrupt checkpoints fail
clearly."""

import copy

import pytest
import torch
from conftest import compose_cfg

import mimiq.distill.qat as qat_mod
from mimiq.data.datasets import TensorImageDataset, build_loader
from mimiq.distill.losses import distill_loss
from mimiq.distill.qat import build_optimizer, qat_step, train_qat
from mimiq.evaluate.classification import evaluate
from mimiq.models import create_model, model_data_config
from mimiq.models.attention import capture, swap_attention
from mimiq.quant import QuantSpec
from mimiq.quant.convert import build_student
from mimiq.synth.generate import SyntheticSet
from mimiq.task.classification import Classification

CPU = torch.device("cpu")


def _setup(tmp_path, *overrides):
    cfg = compose_cfg(
        [
            "debug=tiny",
            "model.train_teacher=false",
            "qat.epochs=2",
            "qat.batch_size=8",
            "qat.no_step_epochs=0",
            "optim.lr=0.01",
            *overrides,
        ]
    )
    torch.manual_seed(0)
    teacher = create_model(cfg.model, num_classes=10)
    for p in teacher.parameters():
        p.requires_grad_(False)
    swap_attention(teacher)
    images, labels = torch.randn(16, 3, 32, 32).clamp(-2, 2), torch.randint(0, 10, (16,))
    dc = model_data_config(teacher)
    eval_set = TensorImageDataset(
        (torch.rand(12, 3, 32, 32) * 255).to(torch.uint8), torch.randint(0, 10, (12,)), dc["mean"], dc["std"]
    )
    student, _ = build_student(teacher, QuantSpec.from_cfg(cfg.quant), images[:8])
    return cfg, teacher, student, SyntheticSet(images, labels, {}), build_loader(eval_set, 6, False), dc


def _evaluator(loader):
    return lambda student: evaluate(student, loader, CPU)["top1"]


def _train(cfg, teacher, student, synth, loader, out_dir, evaluate=None):
    task = Classification(cfg)
    return train_qat(student, teacher, synth, task, cfg, CPU, out_dir, evaluate=evaluate or _evaluator(loader))


def test_only_the_student_gets_gradients(tmp_path):
    cfg, teacher, student, synth, _, _ = _setup(tmp_path)
    x, labels = synth.images[:4], synth.labels
    with torch.no_grad(), capture(teacher, "matmul_av") as t_av:
        t_logits = teacher(x)
    with capture(student, "matmul_av") as s_av:
        s_logits = student(x)
    terms = distill_loss(s_logits, t_logits, labels[:4], s_av, t_av, cfg.distill, drop_cls=True)
    assert set(terms) == {"kd", "hsad", "total"} and terms["total"] > 0
    terms["total"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    grads = [p.grad for p in student.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads[:5]) and any(g.abs().sum() > 0 for g in grads if g is not None)


def test_qat_resume_matches_uninterrupted_run(tmp_path, monkeypatch):
    cfg, teacher, student, synth, loader, dc = _setup(tmp_path)
    full = _train(cfg, teacher, student, synth, loader, tmp_path / "a")
    full_state = {k: v.clone() for k, v in student.state_dict().items()}

    cfg, teacher, student, synth, loader, dc = _setup(tmp_path)
    real_save = qat_mod.save_training_state

    def dying_save(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(qat_mod, "save_training_state", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _train(cfg, teacher, student, synth, loader, tmp_path / "b")
    monkeypatch.setattr(qat_mod, "save_training_state", real_save)
    cfg, teacher, student, synth, loader, dc = _setup(tmp_path)  # a fresh process would rebuild all
    resumed = _train(cfg, teacher, student, synth, loader, tmp_path / "b")
    assert resumed["resumed_from"] == 1
    assert [h["top1"] for h in resumed["history"]] == [h["top1"] for h in full["history"]]
    assert resumed["history"][-1]["loss_total"] == pytest.approx(full["history"][-1]["loss_total"], abs=1e-6)
    for k, v in student.state_dict().items():
        assert torch.allclose(v, full_state[k], atol=1e-6), k


def test_qat_changes_the_student(tmp_path):
    cfg, teacher, student, synth, loader, dc = _setup(tmp_path, "distill=mimiq")
    before = [p.detach().clone() for p in student.parameters()]
    _train(cfg, teacher, student, synth, loader, tmp_path)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_corrupt_qat_checkpoint_names_the_file(tmp_path):
    cfg, teacher, student, synth, loader, dc = _setup(tmp_path)
    (tmp_path / "ckpt_last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RuntimeError, match=r"QAT checkpoint is unreadable or corrupt: .*ckpt_last.pt.*Delete"):
        _train(cfg, teacher, student, synth, loader, tmp_path)
    assert (tmp_path / "ckpt_last.pt").read_bytes() == b"\x00garbage"  # nothing deleted


@pytest.mark.parametrize("distill", ["kd", "ce"])
def test_other_distill_options(tmp_path, distill):
    cfg, teacher, student, synth, loader, dc = _setup(tmp_path, f"distill={distill}", "qat.epochs=1")
    out = _train(cfg, teacher, student, synth, loader, tmp_path)
    assert set(out["history"][0]) >= {"epoch", "top1", "loss_total"}
    assert ("loss_kd" in out["history"][0]) == (distill == "kd")


def test_eval_every_skips_epochs_but_always_evaluates_the_last(tmp_path):
    cfg, teacher, student, synth, loader, dc = _setup(tmp_path, "qat.epochs=3", "qat.eval_every=2")
    calls = []
    real_eval = _evaluator(loader)
    (tmp_path / "a").mkdir()
    out = _train(cfg, teacher, student, synth, loader, tmp_path / "a", lambda m: calls.append(1) or real_eval(m))
    assert [h["top1"] is None for h in out["history"]] == [True, False, False] and len(calls) == 2
    assert out["top1"] == out["history"][-1]["top1"]
    assert out["top1_best"] == max(out["history"][1]["top1"], out["history"][2]["top1"])


def test_evaluations_during_qat_leave_the_trained_student_unchanged(tmp_path):
    """The demo and the bench evaluate after the last epoch only (`qat.eval_every=${qat.epochs}`) and report the
    numbers of a run that evaluates every epoch: a test-split evaluation must leave the student's state, its mode
    and the QAT's draws (augmentation on) as they were."""
    states, finals = [], []
    for every in ("1", "3"):
        aug = ("qat.augment.enabled=true", "qat.augment.synthetic=true")
        cfg, teacher, student, synth, loader, dc = _setup(tmp_path, "qat.epochs=3", f"qat.eval_every={every}", *aug)
        out = _train(cfg, teacher, student, synth, loader, tmp_path / every)
        states.append({k: v.clone() for k, v in student.state_dict().items()})
        finals.append((out["top1"], out["history"][-1]["loss_total"]))
    assert finals[0] == finals[1]
    assert states[0].keys() == states[1].keys()
    for k, v in states[0].items():
        assert torch.equal(v, states[1][k]), k


def test_no_evaluator_no_top1(tmp_path):
    cfg, teacher, student, synth, _, _ = _setup(tmp_path, "qat.epochs=1")
    out = train_qat(student, teacher, synth, Classification(cfg), cfg, CPU, tmp_path)
    assert out["top1"] is None and out["top1_best"] is None and "top1" not in out["history"][0]


def test_qat_step_is_the_manual_step(tmp_path):
    """qat_step = both forwards with capture, the task's terms, zeroed grads, backward, step (checked by hand)."""
    cfg, teacher, student, synth, _, _ = _setup(tmp_path)
    task, x, y = Classification(cfg), synth.images[:4], synth.labels[:4]
    manual, before = copy.deepcopy(student), copy.deepcopy(student.state_dict())
    opts = [build_optimizer([p for p in m.parameters() if p.requires_grad], cfg.optim) for m in (student, manual)]
    terms = qat_step(student, teacher, task, x, y, opts[0], drop_cls=True)
    with torch.no_grad(), capture(teacher, "matmul_av") as t_av:
        t_logits = teacher(x)
    with capture(manual, "matmul_av") as s_av:
        want = distill_loss(manual(x), t_logits, y, s_av, t_av, cfg.distill, drop_cls=True)
    want["total"].backward()
    opts[1].step()
    assert set(terms) == set(want) == {"kd", "hsad", "total"}
    assert all(not v.requires_grad and torch.equal(v, want[k].detach()) for k, v in terms.items())
    for (name, a), b in zip(student.state_dict().items(), manual.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())  # the step was taken


def test_qat_step_without_step_and_scaled_loss(tmp_path):
    """step=False leaves the weights, loss_scale scales the gradients only (the returned total is unscaled)."""
    cfg, teacher, student, synth, _, _ = _setup(tmp_path)
    task, x, y = Classification(cfg), synth.images[:4], synth.labels[:4]
    opt = build_optimizer([p for p in student.parameters() if p.requires_grad], cfg.optim)
    before = copy.deepcopy(student.state_dict())
    one = qat_step(student, teacher, task, x, y, opt, drop_cls=True, step=False)
    grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    assert grads and all(torch.equal(v, before[k]) for k, v in student.state_dict().items())
    four = qat_step(student, teacher, task, x, y, opt, drop_cls=True, step=False, loss_scale=4.0)
    assert torch.equal(one["total"], four["total"])
    for g, p in zip(grads, [p for p in student.parameters() if p.grad is not None], strict=True):
        assert torch.equal(p.grad, 4 * g)  # a power of two scales every rounding step exactly


def test_train_qat_calls_qat_step(tmp_path, monkeypatch):
    """The loop's step is `qat_step` itself: once per batch, with the optimiser stepping after no_step_epochs."""
    cfg, teacher, student, synth, loader, _ = _setup(tmp_path, "qat.no_step_epochs=1")
    seen = []
    real = qat_mod.qat_step
    monkeypatch.setattr(qat_mod, "qat_step", lambda *a, **k: seen.append(k["step"]) or real(*a, **k))
    out = _train(cfg, teacher, student, synth, loader, tmp_path)
    assert seen == [False, False, True, True] and out["steps"] == 2


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_quantizer_lr_scale_puts_the_quantizer_parameters_in_their_own_group(tmp_path, scale):
    from mimiq.quant.quantizers import Quantizer

    cfg, _, student, *_ = _setup(tmp_path, f"optim.quantizer_lr_scale={scale}", "optim.schedule=cosine")
    groups = qat_mod.param_groups(student, cfg.optim)
    trainable = {id(p) for p in student.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable and sum(len(g["params"]) for g in groups) == len(
        trainable
    )
    quant = {id(p) for m in student.modules() if isinstance(m, Quantizer) for p in m.parameters()}
    assert quant, "the student has LSQ activation quantizers with a step and a zero point"
    opt = build_optimizer(groups, cfg.optim)
    sched = qat_mod.build_scheduler(opt, cfg.optim, epochs=4)
    if scale == 1.0:
        assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == cfg.optim.lr
    else:
        assert [len(g["params"]) for g in opt.param_groups] == [len(trainable - quant), len(quant)]
        assert {id(p) for p in opt.param_groups[1]["params"]} == quant
        assert opt.param_groups[1]["lr"] == pytest.approx(cfg.optim.lr * scale)
    lrs0 = [g["lr"] for g in opt.param_groups]
    for _ in range(4):
        opt.step()
        sched.step()
    floor = [lr * cfg.optim.min_lr_ratio for lr in lrs0]  # every group ends at its own floor
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(floor)
