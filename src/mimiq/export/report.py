"""`export_run`: a finished run's student -> `<run dir>/export/` (ONNX, packed checkpoint, the comparison table).

Everything is checked (run directory, student, optional packages) before anything is computed, and computed before
anything is written; the files go to a temporary folder next to `export/` that replaces it in one rename.

The table: top-1 of the fake-quant student, the integer reference and onnxruntime (graph optimisations off and on)
on the run's evaluation split, each with its largest logit difference to the fake-quant logits and its top-1
agreement; the size on disk of the FP32 weights, the packed checkpoint and the ONNX files; and a CPU latency
benchmark (one image, one thread, onnxruntime with its optimisations on): FP32 ONNX, W8/A8 QDQ and W4/A4 QDQ of the
same architecture and float weights, the two QDQ models calibrated on 8 evaluation images (timing only: their
accuracy is not the run's). Timings are interleaved (every model once per round), median over rounds.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from mimiq.export import onnx as qdq
from mimiq.export.intref import accumulator_bits, integer_model
from mimiq.export.pack import load_packed, packed_state, to_bytes
from mimiq.export.qparams import ExportError
from mimiq.export.run import (
    ROUNDING_TOL,
    RunStudent,
    build_architecture,
    compare,
    eval_batches,
    load_run,
    logits_of,
    num_classes_of,
)
from mimiq.quant import calibrate
from mimiq.utils.io import atomic_save_json

ONNX_FILE, PACKED_FILE, TABLE_FILE, JSON_FILE = "student.onnx", "student_packed.pt", "export.md", "export.json"


def fp_model(rs: RunStudent) -> nn.Module:
    """The student's architecture with its float weights and no quantizer (eval, CPU)."""
    model = build_architecture(rs.cfg.model, num_classes_of(rs.cfg), None)
    state = rs.student.state_dict()
    model.load_state_dict({k: state[k] for k in model.state_dict()}, strict=True)
    return model


def fp_onnx(model: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The float model as ONNX (the latency benchmark's FP32 reference)."""
    return qdq.torch_export(model, input_shape)


def latency(models: dict[str, bytes], input_shape: tuple[int, ...], rounds: int, runs: int) -> dict[str, float]:
    """{name: median ms per image} at batch 1, one thread, optimisations on; interleaved rounds."""
    sessions = {k: qdq.session(v, optimize=True) for k, v in models.items()}
    x = {"images": torch.randn(1, *input_shape).numpy()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for s in sessions.values():  # warm-up
        for _ in range(3):
            s.run(None, x)
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(runs):
                s.run(None, x)
            times[k].append(1000 * (time.perf_counter() - t0) / runs)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def bench_models(rs: RunStudent, calib: torch.Tensor, input_shape: tuple[int, ...]) -> dict[str, bytes]:
    """FP32 ONNX and W8/A8, W4/A4 QDQ ONNX of the run's architecture and float weights."""
    from mimiq.quant import quantize_model

    fp = fp_model(rs)
    models = {"FP32 ONNX": fp_onnx(fp, input_shape)}
    for w, a in ((8, 8), (4, 4)):
        m = fp_model(rs)
        quantize_model(m, replace(rs.spec, w_bits=w, a_bits=a))
        calibrate(m, calib)
        models[f"W{w}/A{a} QDQ"] = qdq.to_onnx(m, input_shape)[0]
    return models


def check_forwards(student: nn.Module, onnx_bytes: bytes, loader) -> dict:
    """The comparisons of the report on `loader`'s images: {"compare": {forward: `compare` with the fake-quant
    logits}, "float64_check", "ort_vs_intref" (max abs logit diff), "accumulator_bits" (largest, signed)}."""
    int_model = integer_model(student)
    fq, labels = logits_of(student, loader)
    logits = {
        "fake-quant": fq,
        "integer reference": logits_of(int_model, loader)[0],
        "onnxruntime, optimisations off": logits_of(qdq.ort_forward(qdq.session(onnx_bytes, False)), loader)[0],
        "onnxruntime, optimisations on": logits_of(qdq.ort_forward(qdq.session(onnx_bytes, True)), loader)[0],
    }
    ort_off = logits["onnxruntime, optimisations off"]
    return {
        "compare": {k: compare(v, fq, labels) for k, v in logits.items()},
        "float64_check": float64_check(student, loader),
        "ort_vs_intref": compare(ort_off, logits["integer reference"], labels)["max_abs_diff"],
        "accumulator_bits": max(accumulator_bits(int_model).values(), default=None),
    }


def float64_check(student: nn.Module, loader) -> dict:
    """`compare` of the integer reference with the fake-quant forward, both in float64 (no flips: exact math)."""
    s64 = copy.deepcopy(student).double()
    i64 = integer_model(s64)
    ref, labels = logits_of(lambda x: s64(x.double()), loader)
    return compare(logits_of(lambda x: i64(x.double()), loader)[0], ref, labels)


def _row(name: str, c: dict) -> str:
    return (
        f"| {name} | {c['top1']:.2f} | {c['max_abs_diff']:.2e} | {c['max_rel_diff']:.2e} | {c['top1_agree']:.2f} "
        f"| {c['within_rounding']:.2f} |"
    )


def table(result: dict) -> str:
    """The markdown report of `export_run`'s result."""
    r, cmp, size = result, result["compare"], result["size_bytes"]
    lines = [
        f"# Export of {r['run_dir']}",
        "",
        f"{r['model']} {r['bits']}, {cmp['fake-quant']['n']} evaluation images of `{r['data']}`; logit differences "
        "are to the fake-quant student's logits (relative: to its largest |logit|); 'float rounding only': images "
        f"whose relative difference is <= {ROUNDING_TOL:g} (the others hold an activation one grid step apart).",
        "",
        "| forward | top-1 (%) | max abs logit diff | max rel diff | top-1 agreement (%) | float rounding only (%) |",
        "|---|---|---|---|---|---|",
        *(_row(k, c) for k, c in cmp.items()),
        "",
        f"onnxruntime (optimisations off) vs the integer reference: max abs logit diff {r['ort_vs_intref']:.2e}. "
        f"In float64 (`student.double()`) the integer reference equals the fake-quant forward: max abs logit diff "
        f"{r['float64_check']['max_abs_diff']:.2e}, top-1 agreement {r['float64_check']['top1_agree']:.2f} %.",
        "",
        f"ONNX: opset {r['onnx']['opset']}, integer containers {r['onnx']['containers']}; "
        f"largest integer accumulator: {r['accumulator_bits']} bits (signed). Packed checkpoint round trip "
        f"bit-exact: {r['packed_bit_exact']}.",
        "",
        "| file | size on disk (bytes) | vs FP32 weights |",
        "|---|---|---|",
        *(f"| {k} | {v:,} | {v / size['FP32 weights (torch.save)']:.3f} |" for k, v in size.items()),
    ]
    if r.get("latency_ms"):
        lines += [
            "",
            f"CPU latency per image (batch 1, 1 thread, onnxruntime {r['onnxruntime']} optimisations on, median of "
            f"{r['bench']['rounds']} interleaved rounds of {r['bench']['runs']} runs; a benchmark, not a test):",
            "",
            "| model | ms / image | vs FP32 |",
            "|---|---|---|",
            *(f"| {k} | {v:.3f} | {v / r['latency_ms']['FP32 ONNX']:.2f}x |" for k, v in r["latency_ms"].items()),
        ]
    return "\n".join(lines) + "\n"


@torch.no_grad()
def export_run(
    run_dir: str | Path, limit: int | None = None, bench: bool = True, rounds: int = 7, runs: int = 20
) -> dict:
    """Exports the student of a finished run to `<run_dir>/export/` and returns the result (also export.json).

    Args:
        limit: evaluate on the first `limit` images of the evaluation split (all if None).
        bench: run the latency benchmark (`rounds` interleaved rounds of `runs` images per model)."""
    rs = load_run(run_dir)
    missing = qdq.missing_extra()
    if missing:
        raise ExportError(f"cannot export to ONNX: {missing}")
    import onnxruntime

    student, cfg = rs.student, rs.cfg
    loader = eval_batches(cfg, student, limit)
    input_shape = tuple(next(iter(loader))[0].shape[1:])
    onnx_bytes, onnx_info = qdq.to_onnx(student, input_shape)
    checks = check_forwards(student, onnx_bytes, loader)
    packed = packed_state(
        student, OmegaConf.to_container(cfg.model, resolve=True), num_classes_of(cfg), OmegaConf.to_container(cfg.quant)
    )
    packed_bytes = to_bytes(packed)
    fp = fp_model(rs)
    sizes = {
        "FP32 weights (torch.save)": len(to_bytes(fp.state_dict())),
        "packed checkpoint": len(packed_bytes),
        "QDQ ONNX": len(onnx_bytes),
    }
    calib = next(iter(loader))[0][:8]
    models = bench_models(rs, calib, input_shape) if bench else {}
    sizes["FP32 ONNX"] = len(models["FP32 ONNX"] if bench else fp_onnx(fp, input_shape))
    result = {
        "run_dir": str(rs.run_dir),
        "model": cfg.model.name,
        "data": cfg.data.name,
        "bits": rs.spec.tag,
        "run_top1": rs.top1,
        **checks,
        "onnx": onnx_info,
        "onnxruntime": onnxruntime.__version__,
        "size_bytes": sizes,
        "latency_ms": latency(models, input_shape, rounds, runs) if bench else None,
        "bench": {"rounds": rounds, "runs": runs, "threads": 1},
    }
    with tempfile.TemporaryDirectory(dir=rs.run_dir, prefix=".export-") as tmp:
        tmp = Path(tmp)
        (tmp / PACKED_FILE).write_bytes(packed_bytes)
        rebuilt = load_packed(tmp / PACKED_FILE)
        result["packed_bit_exact"] = all(torch.equal(rebuilt(x), student(x)) for x, _ in loader)
        (tmp / ONNX_FILE).write_bytes(onnx_bytes)
        (tmp / TABLE_FILE).write_text(table(result))
        atomic_save_json(result, tmp / JSON_FILE)
        _replace_dir(tmp, rs.run_dir / "export")
        tmp.mkdir()  # TemporaryDirectory removes its (now empty) folder
    return result


def _replace_dir(src: Path, dst: Path) -> None:
    """Moves folder `src` to `dst`, replacing an older `dst` only once the new one is complete."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}-old-{time.time_ns()}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old)


def summary_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)
