"""quantize_model: FP equality when disabled, manifest counts and policies, calibration, save -> load, QuantSpec."""

import copy
import importlib.util
import io
from pathlib import Path

import pytest
import torch
from conftest import CONF_DIR, compose_cfg
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from torch import nn

from mimiq.models import create_model
from mimiq.models.attention import attention_modules, swap_attention
from mimiq.quant import (
    FP,
    LSQActQuantizer,
    QuantizerNotInitializedError,
    QuantSpec,
    build_manifest,
    calibrate,
    quantize_model,
    quantizers,
    set_quantizers_enabled,
)


def model_cfg(name: str):
    cfg = OmegaConf.load(Path(CONF_DIR) / "model" / f"{name}.yaml")
    cfg.pretrained = False
    return cfg


def fp_and_student(name: str, spec: QuantSpec, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """(FP model with our attention, its quantized copy), random init, 10 classes."""
    torch.manual_seed(seed)
    fp = create_model(model_cfg(name), num_classes=10)
    swap_attention(fp)
    student = copy.deepcopy(fp)
    quantize_model(student, spec)
    return fp, student


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name,spec",
    [
        ("vit_test", QuantSpec()),
        ("swin_test", QuantSpec()),
        ("vit_test", QuantSpec(first_last="8bit", act_quantizer="ema_minmax", weight_quantizer="lsq")),
    ],
)
def test_disabled_quantizers_give_the_fp_logits_exactly(name, spec):
    fp, student = fp_and_student(name, spec)
    x = images()
    with torch.no_grad():
        assert calibrate(student, x) == len(quantizers(student))
        assert not torch.equal(student(x), fp(x))
        assert set_quantizers_enabled(student, False) == len(quantizers(student))
        assert torch.equal(student(x), fp(x))


def _count(model: nn.Module) -> tuple[int, int]:
    return sum(isinstance(m, nn.Linear | nn.Conv2d) for m in model.modules()), len(attention_modules(model))


@pytest.mark.parametrize("name", ["vit_test", "swin_test", "deit_small_patch16_224", "swin_tiny_patch4_window7_224"])
def test_manifest_rows_equal_module_counts(name):
    with torch.device("meta"):  # shapes only: instant, no memory
        model = create_model(model_cfg(name))
    swap_attention(model)
    layers, attention = _count(model)
    manifest = quantize_model(model, QuantSpec())
    assert len(manifest) == 2 * layers + 4 * attention
    assert manifest.counts() == {
        "weight": layers,
        "input": layers - 1,
        "q": attention,
        "k": attention,
        "probs": attention,
        "v": attention,
    }
    first = [r for r in manifest.rows if r.module == "patch_embed.proj"]
    assert [(r.role, r.bits) for r in first] == [("weight", 4), ("input", FP)]  # paper: image input FP
    assert "1 FP: patch_embed.proj.input" in manifest.summary()
    assert manifest.to_records()[1] == {
        "module": "patch_embed.proj",
        "role": "input",
        "bits": FP,
        "granularity": "-",
        "signed": "-",
        "quantizer": "fp",
    }
    table = str(manifest).splitlines()
    assert table[0].split() == ["module", "role", "bits", "granularity", "signed", "quantizer"]
    assert len(table) == len(manifest) + 2  # header + rows + summary


def test_first_last_8bit_policy_and_fp_bits():
    _, student = fp_and_student("vit_test", QuantSpec(w_bits=3, a_bits=3, first_last="8bit"))
    assert not any(q.training for q in quantizers(student))  # new quantizers follow the (eval) model's mode
    rows = build_manifest(student).rows
    edge = {(r.module, r.role): r.bits for r in rows if r.module in ("patch_embed.proj", "head")}
    assert edge == {(m, role): 8 for m in ("patch_embed.proj", "head") for role in ("weight", "input")}
    assert {r.bits for r in rows if r.module not in ("patch_embed.proj", "head")} == {3}
    fp, student = fp_and_student("swin_test", QuantSpec(w_bits=FP, a_bits=FP))
    assert quantizers(student) == [] and {r.quantizer for r in build_manifest(student).rows} == {"fp"}
    with torch.no_grad():
        assert torch.equal(student(images()), fp(images()))


def test_calibration_resolves_signedness_and_training_needs_it():
    fp, student = fp_and_student("vit_test", QuantSpec())
    assert {r.signed for r in build_manifest(student).rows if r.role != "weight"} == {"auto(min<0)", "-"}
    with pytest.raises(QuantizerNotInitializedError, match="calibrate"):
        student(images())  # a grad-enabled forward before calibration
    student.train()
    calibrate(student, images())
    assert student.training  # mode restored
    signed = {(r.role, r.signed) for r in build_manifest(student).rows if r.role != "weight" and r.bits != FP}
    assert ("probs", "unsigned") in signed and ("probs", "signed") not in signed
    assert ("q", "signed") in signed
    for p in student.parameters():
        p.requires_grad_(True)
    logits = student(images())
    nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    act = [q for q in quantizers(student) if isinstance(q, LSQActQuantizer)]
    assert all(q.step.grad is not None for q in act) and any(q.zero_point.grad.abs().sum() > 0 for q in act)
    assert student.blocks[0].attn.qkv.weight.grad.abs().sum() > 0  # STE through the min/max weights


def test_more_bits_less_error():
    errs = {}
    for bits in (4, 8):
        fp, student = fp_and_student("vit_test", QuantSpec(w_bits=bits, a_bits=bits))
        with torch.no_grad():
            calibrate(student, images(16))
            errs[bits] = (student(images()) - fp(images())).pow(2).mean().item()
    assert errs[8] < errs[4] / 10


@pytest.mark.parametrize(
    "name,spec",
    [
        ("vit_test", QuantSpec()),
        ("swin_test", QuantSpec()),
        (
            "vit_test",
            QuantSpec(
                weight_quantizer="lsq", act_quantizer="lsq_plus", a_granularity="head", quirk_lsq_weight_qmin=True
            ),
        ),
        ("swin_test", QuantSpec(act_quantizer="ema_minmax", w_granularity="tensor", quirk_signed_min_1e5=True)),
    ],
)
def test_save_load_gives_identical_outputs(name, spec):
    _, student = fp_and_student(name, spec)
    student.train()
    calibrate(student, images(8))
    for p in student.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(student.parameters(), lr=0.05)
    nn.functional.cross_entropy(student(images()), torch.arange(4)).backward()
    opt.step()  # trained steps, zero points and weights differ from their init
    student.eval()
    buf = io.BytesIO()
    torch.save(student.state_dict(), buf)
    buf.seek(0)
    _, fresh = fp_and_student(name, spec, seed=123)  # other weights, uninitialised quantizers
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    fresh.eval()
    x = images(seed=7)
    with torch.no_grad():
        assert torch.equal(fresh(x), student(x))
    assert build_manifest(fresh) == build_manifest(student)


def test_per_head_and_g_scale_quirk():
    _, student = fp_and_student("vit_test", QuantSpec(a_granularity="head", quirk_g_scale_top_level=True))
    attn = student.blocks[0].attn
    assert attn.matmul_qk.quant_a.step.shape == (attn.num_heads,)
    assert attn.qkv.input_quant.step.shape == (1,)  # Linear inputs stay per tensor
    assert student.head.input_quant.g_factor == 0.01  # the only direct child of the model
    assert attn.qkv.input_quant.g_factor == attn.matmul_av.quant_b.g_factor == 1.0
    _, correct = fp_and_student("vit_test", QuantSpec())
    assert {q.g_factor for q in quantizers(correct) if isinstance(q, LSQActQuantizer)} == {0.01}


def test_zero_point_quirk_reaches_every_lsq_activation_quantizer():
    for quirk in (True, False):
        _, student = fp_and_student("vit_test", QuantSpec(quirk_zero_point_off_grid=quirk))
        acts = [q for q in quantizers(student) if isinstance(q, LSQActQuantizer)]
        assert acts and {q.zero_point_on_grid for q in acts} == {not quirk}
        _, student = fp_and_student("vit_test", QuantSpec(quirk_zero_point_min_init=quirk))
        acts = [q for q in quantizers(student) if isinstance(q, LSQActQuantizer)]
        assert acts and {q.zero_point_from_min for q in acts} == {quirk}


def test_quantize_twice_or_without_attention_fails():
    _, student = fp_and_student("vit_test", QuantSpec())
    with pytest.raises(ValueError, match="already quantized"):
        quantize_model(student, QuantSpec())
    with pytest.raises(ValueError, match="no timm Attention"):
        quantize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)), QuantSpec())


@pytest.mark.parametrize("bits", ["w4a8", "w2a4", "w3a3", "w5a5", "w8a8", "fp"])
def test_bits_configs_compose_into_a_spec(bits):
    spec = QuantSpec.from_cfg(compose_cfg([f"bits={bits}"]).quant)
    assert spec.tag == ("w32a32" if bits == "fp" else bits) and spec.name == "mimiq"
    spec = QuantSpec.from_cfg(compose_cfg(["quant=qat8bit", f"bits={bits}"]).quant)
    assert spec.first_last == "8bit" and spec.tag == ("w32a32" if bits == "fp" else bits)


def test_bad_quant_configs_fail_naming_the_field():
    with pytest.raises(ValueError, match=r"quant\.w_bits=9: must be 2\.\.8 or 32 \(FP\)"):
        QuantSpec.from_cfg(compose_cfg(["quant.w_bits=9"]).quant)
    with pytest.raises(ValueError, match=r"quant\.w_bits=1: .*quant\.a_bits=1: "):
        QuantSpec(w_bits=1, a_bits=1)
    with pytest.raises(ValueError, match=r"quant\.w_granularity='row': must be one of channel, tensor"):
        QuantSpec.from_cfg(compose_cfg(["quant.w_granularity=row"]).quant)
    with pytest.raises(ValueError, match=r"quant\.act_quantizer='lsqq'"):
        QuantSpec(act_quantizer="lsqq")
    with pytest.raises(ValueError, match=r"quant\.a_bit: unknown field; did you mean a_bits\?"):
        QuantSpec.from_cfg({"a_bit": 4})
    with pytest.raises(ValueError, match=r"quant\.quirk_lsq_weight_qmin='yes': must be a bool"):
        QuantSpec(quirk_lsq_weight_qmin="yes")
    with pytest.raises(MissingConfigException, match="w9a4"):
        compose_cfg(["bits=w9a4"])  # no such bits option: fails at compose time


@pytest.mark.parametrize("name,rows", [("deit_small_patch16_224", 148), ("swin_tiny_patch4_window7_224", 154)])
def test_print_manifest_script(name, rows, capsys):
    path = Path(CONF_DIR).parent / "scripts" / "print_manifest.py"
    script = importlib.util.module_from_spec(importlib.util.spec_from_file_location("print_manifest", path))
    script.__spec__.loader.exec_module(script)
    script.main([f"model={name}", "bits=w4a8"])  # pretrained=false is forced
    out = capsys.readouterr().out.splitlines()
    assert "w4a8" in out[0] and out[1].split()[0] == "module"
    assert len(out) == 1 + 1 + rows + 1 and out[-1].startswith(f"{rows - 1} quantized tensors (weight ")
