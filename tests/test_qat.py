"""QAT: only the student learns, checkpoints resume bit-exactly, corrupt checkpoints fail clearly."""

import pytest
import torch
from conftest import compose_cfg

import mimiq.distill.qat as qat_mod
from mimiq.data.datasets import TensorImageDataset, build_loader
from mimiq.distill.qat import distill_loss, train_qat
from mimiq.models import create_model, model_data_config
from mimiq.models.attention import swap_attention
from mimiq.quant import QuantSpec
from mimiq.quant.convert import build_student
from mimiq.utils.hooks import capture


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
    return cfg, teacher, student, images, labels, build_loader(eval_set, 6, False), dc


def test_only_the_student_gets_gradients(tmp_path):
    cfg, teacher, student, images, labels, _, _ = _setup(tmp_path)
    x = images[:4]
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
    cfg, teacher, student, images, labels, loader, dc = _setup(tmp_path)
    full = train_qat(student, teacher, images, labels, cfg, torch.device("cpu"), loader, tmp_path / "a", dc)
    full_state = {k: v.clone() for k, v in student.state_dict().items()}

    cfg, teacher, student, images, labels, loader, dc = _setup(tmp_path)
    real_save = qat_mod.atomic_torch_save

    def dying_save(obj, path):
        real_save(obj, path)
        raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(qat_mod, "atomic_torch_save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train_qat(student, teacher, images, labels, cfg, torch.device("cpu"), loader, tmp_path / "b", dc)
    monkeypatch.setattr(qat_mod, "atomic_torch_save", real_save)
    cfg, teacher, student, images, labels, loader, dc = _setup(tmp_path)  # a fresh process would rebuild all
    resumed = train_qat(student, teacher, images, labels, cfg, torch.device("cpu"), loader, tmp_path / "b", dc)
    assert resumed["resumed_from"] == 1
    assert [h["top1"] for h in resumed["history"]] == [h["top1"] for h in full["history"]]
    assert resumed["history"][-1]["loss_total"] == pytest.approx(full["history"][-1]["loss_total"], abs=1e-6)
    for k, v in student.state_dict().items():
        assert torch.allclose(v, full_state[k], atol=1e-6), k


def test_qat_changes_the_student(tmp_path):
    cfg, teacher, student, images, labels, loader, dc = _setup(tmp_path, "distill=mimiq")
    before = [p.detach().clone() for p in student.parameters()]
    train_qat(student, teacher, images, labels, cfg, torch.device("cpu"), loader, tmp_path, dc)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))


def test_corrupt_qat_checkpoint_names_the_file(tmp_path):
    cfg, teacher, student, images, labels, loader, dc = _setup(tmp_path)
    (tmp_path / "ckpt_last.pt").write_bytes(b"\x00garbage")
    with pytest.raises(RuntimeError, match=r"QAT checkpoint is unreadable or corrupt: .*ckpt_last.pt.*Delete"):
        train_qat(student, teacher, images, labels, cfg, torch.device("cpu"), loader, tmp_path, dc)
    assert (tmp_path / "ckpt_last.pt").read_bytes() == b"\x00garbage"  # nothing deleted


@pytest.mark.parametrize("distill", ["kd", "ce"])
def test_other_distill_options(tmp_path, distill):
    cfg, teacher, student, images, labels, loader, dc = _setup(tmp_path, f"distill={distill}", "qat.epochs=1")
    out = train_qat(student, teacher, images, labels, cfg, torch.device("cpu"), loader, tmp_path, dc)
    assert set(out["history"][0]) >= {"epoch", "top1", "loss_total"}
    assert ("loss_kd" in out["history"][0]) == (distill == "kd")


def test_eval_every_skips_epochs_but_always_evaluates_the_last(tmp_path, monkeypatch):
    cfg, teacher, student, images, labels, loader, dc = _setup(tmp_path, "qat.epochs=3", "qat.eval_every=2")
    calls = []
    real_eval = qat_mod.evaluate
    monkeypatch.setattr(qat_mod, "evaluate", lambda *a, **k: calls.append(1) or real_eval(*a, **k))
    (tmp_path / "a").mkdir()
    out = train_qat(student, teacher, images, labels, cfg, torch.device("cpu"), loader, tmp_path / "a", dc)
    assert [h["top1"] is None for h in out["history"]] == [True, False, False] and len(calls) == 2
    assert out["top1"] == out["history"][-1]["top1"]
    assert out["top1_best"] == max(out["history"][1]["top1"], out["history"][2]["top1"])
