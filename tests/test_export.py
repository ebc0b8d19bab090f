"""mimiq.export: the integer reference equals the fake-quant forward, the ONNX QDQ graph run by onnxruntime equals
it too (optimisations off), the packed checkpoint rebuilds the student bit for bit, and bad input is refused by name
before anything is written.

The ONNX tests need the optional `export` extra (onnx, onnxruntime: `make install-export`); without it they skip,
naming the missing package, unless MIMIQ_REQUIRE_EXPORT=1 (set by CI), which turns the skip into a failure.

Float32 comparisons of two implementations can differ by one grid step where an activation lies within float
rounding of a rounding boundary (a "flip"); the exact check is in float64, where the integer reference and the
fake-quant student agree to 1e-12.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import compose_cfg
from omegaconf import OmegaConf
from torch import nn

from mimiq.export.intref import INT_LAYERS, integer_matmul, integer_model
from mimiq.export.pack import code_width, load_packed, pack_codes, packed_state, save_packed, unpack_codes
from mimiq.export.qparams import ExportError, check_student, quant_layers
from mimiq.export.run import build_architecture, load_run
from mimiq.models.attention import MatMul
from mimiq.quant import QuantSpec, calibrate
from mimiq.quant.modules import QuantLinear
from mimiq.quant.quantizers import LSQActQuantizer, MinMaxWeightQuantizer, Quantizer

VARIANTS = {  # name: overrides of the quant config
    "w4a4": ["bits=w4a4"],
    "w4a8": ["bits=w4a8"],
    "w8a8": ["bits=w8a8"],
    "w2a4": ["bits=w2a4"],
    "lsq_plus_head": ["quant.act_quantizer=lsq_plus", "quant.a_granularity=head"],
    "ema_minmax": ["quant.act_quantizer=ema_minmax", "bits=w4a8"],
    "lsq_paper_grid": ["quant.weight_quantizer=lsq", "quant.quirk_lsq_weight_qmin=true", "quant.w_granularity=tensor"],
    "first_last_8bit": ["quant=qat8bit", "quant.quirk_signed_min_1e5=true"],
}


def student(model: str, *overrides: str, seed: int = 0) -> nn.Module:
    """A calibrated fake-quantized tiny model (random init; calibration on 16 random images)."""
    cfg = compose_cfg(["debug=tiny", f"model={model}", *overrides])
    torch.manual_seed(seed)
    m = build_architecture(cfg.model, 10, QuantSpec.from_cfg(cfg.quant))
    calibrate(m, torch.randn(16, 3, 32, 32))
    return m


def images(n: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ integer reference


def test_integer_matmul_matches_a_float64_loop():
    g = torch.Generator().manual_seed(0)
    ca, cb = torch.randint(-8, 8, (2, 3, 5), generator=g), torch.randint(-15, 16, (2, 5, 4), generator=g)
    sa, sb = torch.rand(2, 1, 1, generator=g, dtype=torch.float64), torch.rand(4, generator=g, dtype=torch.float64)
    oa, ob = torch.tensor(0.3, dtype=torch.float64), torch.tensor(-0.7, dtype=torch.float64)
    ref = torch.zeros(2, 3, 4, dtype=torch.float64)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                ref[b, i, j] = sum((sa[b, 0, 0] * ca[b, i, k] + oa) * (sb[j] * cb[b, k, j] + ob) for k in range(5))
    torch.testing.assert_close(integer_matmul(ca, cb, sa, sb, oa, ob), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(integer_matmul(ca, cb, sa, sb), torch.matmul(ca * sa, cb * sb), rtol=1e-12, atol=0)


@pytest.mark.parametrize("model", ["vit_test", "swin_test"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_integer_reference_equals_fake_quant_in_float64(model, variant):
    """Same model, same images, float64: the integer arithmetic is the fake-quant math (no flips at 1e-12)."""
    m = student(model, *VARIANTS[variant]).double()
    x = images().double()
    with torch.no_grad():
        ref, out = m(x), integer_model(m)(x)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12 * ref.abs().max().item())
    assert torch.equal(out.argmax(1), ref.argmax(1))


@pytest.mark.parametrize("model,variant", [("vit_test", "w4a4"), ("swin_test", "w2a4"), ("vit_test", "lsq_plus_head")])
def test_integer_layers_equal_fake_quant_layers_on_the_same_input(model, variant):
    """Float32, layer by layer on the inputs the fake-quant student gives each layer: float rounding only."""
    m = student(model, *VARIANTS[variant])
    seen = {}
    hooks = [
        layer.register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, (i, o))) for n, layer in quant_layers(m)
    ]
    with torch.no_grad():
        m(images(8))
    for h in hooks:
        h.remove()
    assert len(seen) == len(quant_layers(m))
    for name, layer in quant_layers(m):
        inputs, ref = seen[name]
        with torch.no_grad():
            out = INT_LAYERS[type(layer)](layer)(*inputs)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item(), msg=name)


def test_integer_reference_float32_agrees_end_to_end():
    m = student("vit_test", "bits=w4a4")
    x = images(64)
    with torch.no_grad():
        ref, out = m(x), integer_model(m)(x)
    per_image = (out - ref).abs().amax(1) / ref.abs().max()
    assert (per_image < 1e-5).float().mean() >= 0.9, per_image  # the rest: flips
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


# ------------------------------------------------------------------------------------------------ packed weights


@pytest.mark.parametrize("width", range(1, 9))
def test_pack_round_trip_and_size(width):
    qmin = -(2 ** (width - 1))
    codes = torch.randint(qmin, qmin + 2**width, (7, 13), generator=torch.Generator().manual_seed(width))
    packed = pack_codes(codes, qmin, width)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-codes.numel() * width // 8)
    assert torch.equal(unpack_codes(packed, qmin, width, codes.numel()).view(7, 13), codes.int())


def test_pack_layout_two_4bit_codes_per_byte_four_2bit():
    assert pack_codes(torch.tensor([-8, 7, 0, -1]), -8, 4).tolist() == [0xF0, 0x78]  # u = 0, 15, 8, 7: low nibble first
    assert pack_codes(torch.tensor([-2, -1, 0, 1]), -2, 2).tolist() == [0b11100100]
    assert code_width(-15, 7) == 5 and code_width(-8, 7) == 4 and code_width(0, 255) == 8


@pytest.mark.parametrize(
    "model,variant,width", [("vit_test", "w4a4", 4), ("swin_test", "w2a4", 2), ("vit_test", "lsq_paper_grid", 5)]
)
def test_packed_checkpoint_rebuilds_the_student_bit_for_bit(tmp_path, model, variant, width):
    cfg = compose_cfg(["debug=tiny", f"model={model}", *VARIANTS[variant]])
    m = student(model, *VARIANTS[variant])
    p = packed_state(m, OmegaConf.to_container(cfg.model), 10, OmegaConf.to_container(cfg.quant))
    assert {e["width"] for e in p["weights"].values()} == {width}
    nbytes = save_packed(p, tmp_path / "s.pt")
    fp = sum(v.numel() * 4 for k, v in m.state_dict().items() if k.endswith("weight") and v.dim() > 1)
    assert nbytes < fp  # at 32 px the float tables and names weigh in; ratios on the mini models: docs/deploy.md
    rebuilt = load_packed(tmp_path / "s.pt")
    x = images(8)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), m(x))
        assert torch.equal(integer_model(rebuilt)(x), integer_model(m)(x))


# ------------------------------------------------------------------------------------------------ bad input


def test_uncalibrated_quantizer_is_refused_by_name():
    cfg = compose_cfg(["debug=tiny"])
    m = build_architecture(cfg.model, 10, QuantSpec.from_cfg(cfg.quant))  # never calibrated
    with pytest.raises(ExportError, match=r"blocks\.0\.attn\.qkv\.input_quant .*uncalibrated"):
        integer_model(m)


def test_uncovered_quantizer_op_and_bit_width_are_refused():
    class OddQuantizer(Quantizer):
        pass

    m = student("vit_test")
    m.blocks[0].mlp.fc1.input_quant = OddQuantizer(4)
    m.blocks[0].norm1 = nn.Sequential(m.blocks[0].norm1, LSQActQuantizer(4))  # a quantizer on a LayerNorm
    m.blocks[1].attn.qkv.input_quant.bits = 10
    with pytest.raises(ExportError) as e:
        check_student(m)
    msg = str(e.value)
    assert "blocks.0.mlp.fc1.input_quant (OddQuantizer): quantizer not covered" in msg
    assert "blocks.0.norm1.1 (LSQActQuantizer): a quantizer outside a quantized" in msg
    assert "blocks.1.attn.qkv.input_quant (LSQActQuantizer): unsupported bit width 10" in msg


def test_fp_model_is_refused():
    cfg = compose_cfg(["debug=tiny"])
    with pytest.raises(ExportError, match="no quantized layer"):
        check_student(build_architecture(cfg.model, 10, None))


# ------------------------------------------------------------------------------------------------ a finished run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir):
    """A finished debug run (tiny ViT, W4/A4)."""
    from mimiq import pipeline

    out = tmp_path_factory.mktemp("run")
    pipeline.run(compose_cfg(["debug=tiny", f"paths.cache_dir={cache_dir}"]), out)
    return out


def test_run_without_finished_student_is_refused_before_writing(run_dir, tmp_path):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for f in ("config_resolved.yaml", "ckpt_last.pt"):
        (unfinished / f).write_bytes((run_dir / f).read_bytes())
    from mimiq.export.report import export_run

    with pytest.raises(ExportError, match=r"no finished student \(student.pt missing; its QAT checkpoint stops at"):
        export_run(unfinished, limit=8, bench=False)
    assert sorted(p.name for p in unfinished.iterdir()) == ["ckpt_last.pt", "config_resolved.yaml"]
    with pytest.raises(ExportError, match="not a run directory"):
        load_run(tmp_path)


def test_missing_package_is_refused_before_writing(run_dir, monkeypatch):
    from mimiq.export import onnx as qdq
    from mimiq.export.report import export_run

    before = sorted(p.name for p in run_dir.iterdir())
    monkeypatch.setattr(qdq, "missing_extra", lambda: "onnxruntime not installed: pip install -e '.[export]'")
    with pytest.raises(ExportError, match="onnxruntime not installed"):
        export_run(run_dir, limit=8, bench=False)
    assert sorted(p.name for p in run_dir.iterdir()) == before


# ------------------------------------------------------------------------------------------------ ONNX (export extra)


@pytest.fixture(scope="module")
def ort_extra():
    """Skips (or, with MIMIQ_REQUIRE_EXPORT=1, fails) unless onnx and onnxruntime import."""
    from mimiq.export.onnx import missing_extra

    missing = missing_extra()
    if missing:
        if os.environ.get("MIMIQ_REQUIRE_EXPORT") == "1":
            pytest.fail(f"MIMIQ_REQUIRE_EXPORT=1 but the export extra is missing: {missing}")
        pytest.skip(f"needs the optional export extra: {missing}")


def _initializers(data: bytes) -> dict:
    import onnx

    return {i.name: i for i in onnx.load_from_string(data).graph.initializer}


@pytest.mark.parametrize(
    "model,variant,opset",
    [("vit_test", "w4a4", 21), ("swin_test", "w2a4", 21), ("vit_test", "w8a8", 20), ("swin_test", "w4a8", 21)],
)
def test_onnx_equals_fake_quant_with_optimisations_off(ort_extra, model, variant, opset):
    import onnx

    from mimiq.export.onnx import graph_summary, ort_forward, session, to_onnx

    m = student(model, *VARIANTS[variant])
    data, info = to_onnx(m, (3, 32, 32))
    assert info["opset"] == opset
    proto = onnx.load_from_string(data)
    weights = [n for n, layer in quant_layers(m) if hasattr(layer, "weight_quant")]
    summary = graph_summary(data)
    assert summary["weight_dq"] == len(weights)  # every quantized weight: integer initializer -> DequantizeLinear
    inits = _initializers(data)
    layers = dict(quant_layers(m))
    w_bits = layers[weights[-1]].weight_quant.bits
    a_bits = next(layer.quant_a.bits for layer in layers.values() if isinstance(layer, MatMul))
    want = onnx.TensorProto.INT4 if w_bits <= 4 else onnx.TensorProto.INT8
    assert all(inits[f"{n}.w.codes"].data_type == want for n in weights)
    assert not any(n.endswith(".weight") and n.rsplit(".", 1)[0] in weights for n in inits)  # no float copy
    dq_axis = {
        n.input[0]: next((a.i for a in n.attribute if a.name == "axis"), None)
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
    }
    for n in weights:  # output channels: axis 1 of a Linear's (in, out) codes, axis 0 of a Conv's
        assert dq_axis[f"{n}.w.codes"] == (0 if n == "patch_embed.proj" else 1), n
        assert list(inits[f"{n}.w.codes"].dims)[dq_axis[f"{n}.w.codes"]] == inits[f"{n}.w.scale"].dims[0]
    assert summary["ops"].get("Clip", 0) == (0 if a_bits == 8 else summary["ops"]["QuantizeLinear"])
    x = images(64)
    with torch.no_grad():
        ref = m(x)
    out = ort_forward(session(data, optimize=False))(x)
    per_image = (out - ref).abs().amax(1) / ref.abs().max()
    assert per_image.median() < 1e-5 and (per_image < 1e-4).float().mean() >= 0.9, per_image
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95
    opt = ort_forward(session(data, optimize=True))(x)  # optimisations on: runs; its accuracy is reported
    assert (opt.argmax(1) == ref.argmax(1)).float().mean() >= 0.8


def test_onnx_keeps_4bit_clipping(ort_extra):
    """Inputs far outside a 4-bit grid: the Clip after QuantizeLinear keeps the codes in [qmin, qmax]; the same
    graph without its Clip (int8 saturation only) gives other outputs."""
    import onnx

    from mimiq.export.onnx import ort_forward, session, to_onnx

    torch.manual_seed(0)
    layer = QuantLinear(nn.Linear(16, 8), MinMaxWeightQuantizer(4, 8, 0), LSQActQuantizer(4, g_factor=1.0))
    m = nn.Sequential(layer).eval()
    calibrate(m, torch.randn(32, 16))
    assert layer.input_quant.grid == (-8, 7)
    x = torch.randn(64, 16) * 50
    with torch.no_grad():
        ref = m(x)
    data = to_onnx(m, (16,))[0]
    out = ort_forward(session(data, optimize=False))(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    proto = onnx.load_from_string(data)
    (clip,) = [n for n in proto.graph.node if n.op_type == "Clip"]
    for n in proto.graph.node:
        n.input[:] = [clip.input[0] if i == clip.output[0] else i for i in n.input]
    proto.graph.node.remove(clip)
    unclipped = ort_forward(session(proto.SerializeToString(), optimize=False))(x)
    assert (unclipped - ref).abs().max() > 0.1 * ref.abs().max()


def test_op_the_onnx_exporter_cannot_write_is_refused_by_name(ort_extra):
    from mimiq.export.onnx import to_onnx

    class BesselNorm(nn.Module):  # aten::i0 has no ONNX symbolic
        def forward(self, x):
            return x + torch.special.i0(x) * 0

    m = student("vit_test")
    m.blocks[0].norm1 = BesselNorm()
    with pytest.raises(ExportError, match=r"does not cover this model: UnsupportedOperatorError: .*aten::i0"):
        to_onnx(m, (3, 32, 32))


def test_export_run_writes_the_table_and_files(ort_extra, run_dir):
    from mimiq.export.report import export_run

    r = export_run(run_dir, limit=32, bench=True, rounds=1, runs=2)
    out = run_dir / "export"
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "export.md", "student.onnx", "student_packed.pt"]
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".export")]  # no temporary folder left
    assert r["packed_bit_exact"] is True
    assert r["float64_check"]["top1_agree"] == 100 and r["float64_check"]["max_rel_diff"] < 1e-9
    cmp = r["compare"]
    assert cmp["integer reference"]["top1_agree"] >= 90 and cmp["onnxruntime, optimisations off"]["top1_agree"] >= 90
    assert set(r["latency_ms"]) == {"FP32 ONNX", "W8/A8 QDQ", "W4/A4 QDQ"}
    table = (out / "export.md").read_text()
    rows = ("| fake-quant |", "| integer reference |", "| onnxruntime, optimisations off |", "| packed checkpoint |")
    assert all(row in table for row in rows), table
    torch.testing.assert_close(load_packed(out / "student_packed.pt")(images(4)), load_run(run_dir).student(images(4)))
