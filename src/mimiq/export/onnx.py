"""The student as an ONNX QDQ graph, run by onnxruntime on CPU (the optional `export` extra: onnx, onnxruntime).

`export_onnx(student, path)` swaps the quantized layers of a copy of the student for export layers and traces it
with torch's TorchScript exporter (`dynamo=False`); each export layer emits its quantization pattern through the
`symbolic` of an autograd function, so the graph holds exactly:

    weights      an integer initializer (the codes, never re-quantized in the graph) -> DequantizeLinear along the
                 output channels: axis 1 of a Linear's (in, out) codes feeding MatMul, axis 0 of a Conv's codes
    activations  QuantizeLinear -> Clip(qmin, qmax) -> DequantizeLinear in an int8 container (uint8 for an unsigned
                 8-bit grid), per tensor or per head (axis 1); the Clip keeps a sub-8-bit grid (4-bit: [-8, 7] or
                 [0, 15]) and is left out when the grid fills the container; a zero point outside the container
                 is shifted with the Clip range (`plan_container`), else int16 with a float Max / Min clip;
                 LSQ+'s real offset b: Sub(b) -> Q -> Clip -> DQ -> Add(b), as its fake-quant
    the rest     float ONNX ops: LayerNormalization, Softmax, Gelu, Add, ... as in the student

Opset: 20 (the exporter's newest) when every tensor fits int8 / uint8; 21 when weights of <= 4 bits are stored as
int4 initializers (their DequantizeLinear needs 21) or a zero point needs int16. Why the TorchScript exporter: the
QDQ pattern is written by hand per layer (no custom-op translation table, no onnxscript), the trace takes seconds,
and the float part is timm's own forward; torch deprecates this exporter, so a later torch may need the dynamo one.
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mimiq.export.qparams import (
    ActQ,
    ExportError,
    WeightQ,
    act_params,
    check_student,
    quant_layers,
    weight_params,
)
from mimiq.models.attention import MatMul
from mimiq.quant.modules import QuantConv2d, QuantLinear
from mimiq.utils.io import atomic_write

OPSET_INT8, OPSET_INT4 = 20, 21
CONTAINERS = {"int8": (torch.int8, -128, 127), "uint8": (torch.uint8, 0, 255), "int16": (torch.int16, -32768, 32767)}


def missing_extra() -> str | None:
    """None if onnx and onnxruntime import, else the message naming what is missing and how to install it."""
    missing = []
    for name in ("onnx", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    return f"{', '.join(missing)} not installed: pip install -e '.[export]' (make install-export)" if missing else None


def container(lo: int, hi: int) -> str:
    """The smallest ONNX integer type holding every value in [lo, hi]."""
    for name, (_, cmin, cmax) in CONTAINERS.items():
        if cmin <= lo and hi <= cmax:
            return name
    raise ValueError(f"no integer container holds [{lo}, {hi}]")


def _along(p: Tensor, x: Tensor, axis: int | None) -> Tensor:
    return p if axis is None or p.dim() == 0 else p.view([-1 if d == axis else 1 for d in range(x.dim())])


class _QDQ(torch.autograd.Function):
    """Activation fake-quant (eager) / QuantizeLinear -> [Clip] -> DequantizeLinear (ONNX)."""

    @staticmethod
    def forward(ctx, x, scale, zero, lo, hi, axis, clip):
        s, z = _along(scale, x, axis), _along(zero.to(x.dtype), x, axis)
        return (x / s + z).clamp(int(lo), int(hi)).round().sub(z).mul(s)

    @staticmethod
    def symbolic(g, x, scale, zero, lo, hi, axis, clip):
        kw = {} if axis is None else {"axis_i": axis}
        q = g.op("QuantizeLinear", x, scale, zero, **kw)
        if clip:
            q = g.op("Clip", q, lo, hi)
        return g.op("DequantizeLinear", q, scale, zero, **kw)


class _DQ(torch.autograd.Function):
    """Integer weight codes -> float (eager) / DequantizeLinear of the integer initializer (ONNX)."""

    @staticmethod
    def forward(ctx, codes, scale, axis):
        return codes.to(scale.dtype) * _along(scale, codes, axis)

    @staticmethod
    def symbolic(g, codes, scale, axis):  # no zero point input: 0 (weights are symmetric)
        return g.op("DequantizeLinear", codes, scale, **({} if axis is None else {"axis_i": axis}))


def plan_container(qmin: int, qmax: int, zero: Tensor) -> tuple[str, int | None]:
    """(container, shift k) for an activation grid [qmin, qmax] with integer zero points `zero` (C,).

    Stored codes are q + k with zero point z + k: DequantizeLinear's (q + k) - (z + k) is unchanged, and one k for
    all channels keeps one Clip range [qmin + k, qmax + k]. int8 or uint8 when some k fits grid and zero points
    (k = 0 when possible); else int16 with k None: onnxruntime has no int16 Clip, so the grid is kept by a float
    Max / Min on x before QuantizeLinear, at the bounds (qmin - z) s and (qmax - z) s."""
    zmin, zmax = int(zero.min()), int(zero.max())
    for name in ("int8", "uint8"):
        _, cmin, cmax = CONTAINERS[name]
        lo, hi = max(cmin - qmin, cmin - zmin), min(cmax - qmax, cmax - zmax)
        if lo <= hi:
            return name, min(max(0, lo), hi)
    _, cmin, cmax = CONTAINERS["int16"]
    if cmin <= min(qmin, zmin) and max(qmax, zmax) <= cmax:
        return "int16", None
    raise ValueError(f"zero points {zmin}..{zmax} of the grid [{qmin}, {qmax}] fit no ONNX integer type")


class OnnxAct(nn.Module):
    """One activation quantizer as [Sub(b)] -> Q -> [Clip] -> DQ -> [Add(b)]; x any shape (per head: (B, H, ...),
    axis 1). An int16 container clips in float (Max, Min) before Q instead."""

    def __init__(self, a: ActQ):
        super().__init__()
        per_axis = a.axis is not None
        zero = a.zero.round().long()
        self.dtype, shift = plan_container(a.qmin, a.qmax, zero)
        tdtype, cmin, cmax = CONTAINERS[self.dtype]
        k = shift or 0
        self.axis, self.clip = a.axis, shift is not None and (a.qmin + k, a.qmax + k) != (cmin, cmax)

        def shaped(t: Tensor, dtype: torch.dtype, vector: tuple[int, ...] = (-1,)) -> Tensor:
            return t.to(dtype).view(vector) if per_axis else t.to(dtype).reshape(())

        self.register_buffer("scale", shaped(a.scale, torch.float32))
        self.register_buffer("zero", shaped(zero + k, tdtype))
        self.register_buffer("lo", torch.tensor(a.qmin + k, dtype=tdtype))
        self.register_buffer("hi", torch.tensor(a.qmax + k, dtype=tdtype))
        self.offset = None if a.offset is None else shaped(a.offset, torch.float32, (-1, 1, 1))
        self.bounds = None
        if shift is None:  # float clip at the dequantized grid ends (per head: (H, 1, 1) for (B, H, N, d))
            s = a.scale.double()
            ends = [((q - zero).double() * s).float() for q in (a.qmin, a.qmax)]
            self.bounds = tuple(shaped(e, torch.float32, (-1, 1, 1)) for e in ends)

    def forward(self, x: Tensor) -> Tensor:
        if self.offset is not None:
            x = x - self.offset
        if self.bounds is not None:
            x = torch.minimum(torch.maximum(x, self.bounds[0]), self.bounds[1])
        x = _QDQ.apply(x, self.scale, self.zero, self.lo, self.hi, self.axis, self.clip)
        return x if self.offset is None else x + self.offset


def _act(q: nn.Module) -> nn.Module:
    a = act_params(q)
    return nn.Identity() if a is None else OnnxAct(a)


class _OnnxWeight(nn.Module):
    """Integer codes + DequantizeLinear along `axis` of the stored codes."""

    def __init__(self, w: WeightQ, transpose: bool):
        super().__init__()
        codes = w.codes.t().contiguous() if transpose else w.codes  # Linear: (in, out), output channels on axis 1
        self.dtype = "int4" if w.qmin >= -8 and w.qmax <= 7 else container(w.qmin, w.qmax)
        tdtype = torch.int8 if self.dtype == "int4" else CONTAINERS[self.dtype][0]
        scale = (1.0 / w.scale.double()).float() if w.op == "div" else w.scale.float()  # DQ multiplies
        self.axis = None if w.axis is None else (1 if transpose else 0)
        self.register_buffer("codes", codes.to(tdtype))
        self.register_buffer("scale", scale if self.axis is not None else scale.reshape(()))

    def forward(self) -> Tensor:
        return _DQ.apply(self.codes, self.scale, self.axis)


class OnnxLinear(nn.Module):
    """x (..., in) -> MatMul(QDQ(x), DQ(codes (in, out))) + bias."""

    def __init__(self, layer: QuantLinear):
        super().__init__()
        self.act = _act(layer.input_quant)
        w = weight_params(layer.weight_quant, layer.weight)
        self.w = _OnnxWeight(w, transpose=True) if w is not None else None
        self.weight = None if w is not None else nn.Parameter(layer.weight.detach().t().contiguous(), False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), False)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.matmul(self.act(x), self.w() if self.w is not None else self.weight)
        return y if self.bias is None else y + self.bias


class OnnxConv2d(nn.Module):
    """x (B, C, H, W) -> Conv(QDQ(x), DQ(codes (out, in, kh, kw)), bias)."""

    def __init__(self, layer: QuantConv2d):
        super().__init__()
        self.act, self.kw = _act(layer.input_quant), layer.conv_kwargs
        w = weight_params(layer.weight_quant, layer.weight)
        self.w = _OnnxWeight(w, transpose=False) if w is not None else None
        self.weight = None if w is not None else nn.Parameter(layer.weight.detach().clone(), False)
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().clone(), False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(self.act(x), self.w() if self.w is not None else self.weight, self.bias, **self.kw)


class OnnxMatMul(nn.Module):
    """a (B, H, N, K) @ b (B, H, K, M) on QDQ'd operands."""

    def __init__(self, layer: MatMul):
        super().__init__()
        self.act_a, self.act_b = _act(layer.quant_a), _act(layer.quant_b)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.act_a(a) @ self.act_b(b)


ONNX_LAYERS = {QuantLinear: OnnxLinear, QuantConv2d: OnnxConv2d, MatMul: OnnxMatMul}


@torch.no_grad()
def onnx_ready_model(student: nn.Module) -> nn.Module:
    """A float32 copy of the (checked) student with export layers in place of the quantized ones, eval mode."""
    check_student(student)
    model = copy.deepcopy(student).float().eval()
    for name, layer in quant_layers(model):
        model.set_submodule(name, ONNX_LAYERS[type(layer)](layer))
    return model


def _containers(model: nn.Module) -> dict[str, list[str]]:
    """{container type: [buffer name of the codes or zero points it holds]} of an `onnx_ready_model`."""
    out: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if isinstance(m, _OnnxWeight):
            out.setdefault(m.dtype, []).append(f"{name}.codes")
        elif isinstance(m, OnnxAct):
            out.setdefault(m.dtype, []).append(f"{name}.zero")
    return out


def torch_export(model: nn.Module, input_shape: tuple[int, ...], **options) -> bytes:
    """torch.onnx.export (TorchScript exporter, opset OPSET_INT8) of `model` on input (batch, *input_shape) with a
    dynamic batch axis, "images" -> "logits"; `options` go to the exporter."""
    buf = io.BytesIO()
    with warnings.catch_warnings():  # the exporter's deprecation notice and tracer warnings on constant shapes
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, *input_shape),),
            buf,
            dynamo=False,
            opset_version=OPSET_INT8,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            **options,
        )
    return buf.getvalue()


def to_onnx(student: nn.Module, input_shape: tuple[int, ...]) -> tuple[bytes, dict]:
    """(serialized ONNX model, info {"opset", "containers": {type: count}}) of the student, with a dynamic batch axis.

    Args:
        input_shape: (3, H, W), the student's image size."""
    import onnx
    from onnx import helper

    model = onnx_ready_model(student)
    containers = _containers(model)
    int4 = set(containers.get("int4", []))
    opset = OPSET_INT4 if int4 or "int16" in containers else OPSET_INT8
    try:  # no deduplication of equal initializers (int4 ones stay apart)
        data = torch_export(model, input_shape, do_constant_folding=True, keep_initializers_as_inputs=True)
    except Exception as e:  # an op of the float part the exporter cannot write
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        raise ExportError(f"the ONNX exporter does not cover this model: {type(e).__name__}: {reason}") from e
    proto = onnx.load_from_string(data)
    inputs = [i for i in proto.graph.input if i.name == "images"]  # initializers are constants, not graph inputs
    del proto.graph.input[:]
    proto.graph.input.extend(inputs)
    names = {init.name for init in proto.graph.initializer}
    lost = sorted(n for ns in containers.values() for n in ns if n not in names)
    if lost:
        raise ExportError(f"ONNX export: integer tensors folded away or renamed: {lost[:5]}")
    for i, init in enumerate(proto.graph.initializer):
        if init.name in int4:
            values = onnx.numpy_helper.to_array(init).astype("int8")
            proto.graph.initializer[i].CopyFrom(
                helper.make_tensor(init.name, onnx.TensorProto.INT4, values.shape, values.flatten().tolist())
            )
    if opset != OPSET_INT8:
        for op in proto.opset_import:
            if op.domain in ("", "ai.onnx"):
                op.version = opset
        proto.ir_version = max(proto.ir_version, 10)
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), {"opset": opset, "containers": {k: len(v) for k, v in containers.items()}}


def export_onnx(student: nn.Module, path: str | Path, input_shape: tuple[int, ...]) -> dict:
    """Writes the student's QDQ graph to `path` (atomically); returns `to_onnx`'s info."""
    data, info = to_onnx(student, input_shape)
    atomic_write(path, lambda f: f.write(data))
    return info


def session(model: bytes | str | Path, optimize: bool, threads: int = 1):
    """An onnxruntime CPU session: graph optimisations all off (`ORT_DISABLE_ALL`) or all on (`ORT_ENABLE_ALL`)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def ort_forward(sess):
    """images (B, 3, H, W) tensor -> logits (B, classes) tensor, through the session."""
    return lambda x: torch.from_numpy(sess.run(None, {"images": x.float().numpy()})[0])


def graph_summary(model: bytes) -> dict:
    """What the graph holds: {"ops": {op type: count}, "weight_dq": DequantizeLinear nodes fed by an integer
    initializer, "float_initializers": names of float initializers with >= 2 dims (a float weight matrix)}."""
    import onnx

    proto = onnx.load_from_string(model)
    inits = {i.name: i for i in proto.graph.initializer}
    ints = {n for n, i in inits.items() if i.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)}
    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {
        "ops": ops,
        "weight_dq": sum(n.op_type == "DequantizeLinear" and n.input[0] in ints for n in proto.graph.node),
        "float_initializers": [n for n, i in inits.items() if n not in ints and len(i.dims) >= 2],
    }
