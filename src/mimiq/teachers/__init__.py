"""The shipped mini teachers (this folder's `<model>-<key>.pt` + `.json`): which they are, how they are (re)made.

    ship("vit_mini")    trains the teacher through the cache (or finds it there: no retraining), measures its gate
                        and writes its weights and provenance here (`mimiq.models.shipped` reads them)
    check("vit_mini")   trains it afresh in an empty cache and compares with the provenance

`python scripts/teachers.py [--check]` (`make teachers`) runs them over INSTANCES.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from mimiq.config import compose
from mimiq.models.shipped import SHIPPED_DIR, sha256_file, shipped_files
from mimiq.models.teacher import key_parts, teacher_dir, teacher_key
from mimiq.synth.invariance import gate_met, invariance_report, teacher_gate
from mimiq.task.classification import teacher_stage
from mimiq.utils.io import atomic_save_json, atomic_write, git_sha

# the bench's teacher instances (scripts/bench.py DEFAULT_TEACHERS): name -> Hydra overrides
INSTANCES = {
    "vit_mini": ("model=vit_mini",),
    "vit_mini.t1": ("model=vit_mini", "teacher.seed=1"),
    "swin_mini": ("experiment=mini_swin",),
}
CHECK_TOLERANCE = 1.5  # points: a fresh training within this of the recorded numbers reproduces them
# (training is not bit-reproducible across machines: two trainings of one key gave FP top-1 90.80 and 91.35 %)


def instance_overrides(instance: str) -> list[str]:
    if instance not in INSTANCES:
        raise ValueError(f"unknown teacher instance {instance!r}; expected one of {', '.join(INSTANCES)}")
    return list(INSTANCES[instance])


def gate_report(overrides: list[str], cache_dir: str | None = None) -> tuple[dict, dict]:
    """(info of the teacher stage, invariance report) of the teacher of `overrides`, never the shipped file: the
    cached teacher, or one trained now (into `cache_dir`, default `paths.cache_dir`). The report is what
    scripts/teacher_invariance.py prints: clean top-1 and top-1 under each generator's transform, real test split."""
    extra = ["teacher.use_shipped=false", "logger=none", "device=cpu"]
    extra += [f"paths.cache_dir={cache_dir}"] if cache_dir else []
    cfg = compose([*overrides, *extra])
    stage = teacher_stage(cfg, torch.device("cpu"))
    xs, ys = zip(*stage.eval_loader.dataset, strict=True)
    gens = {g: compose([*overrides, f"generator={g}"]).generator for g in teacher_gate().generators}
    return stage.info, invariance_report(stage.teacher, torch.stack(xs), torch.tensor(ys), gens)


def ship(
    instance: str, folder: Path = SHIPPED_DIR, trained_by: dict | None = None, overrides: list[str] | None = None
) -> dict:
    """Writes `<name>.pt` (the cached teacher.pt's bytes) and `<name>.json` into `folder`; returns the provenance.

    Trains the teacher first if the cache has none. Files of an earlier key of the same instance are removed.
    trained_by: {"commit", "threads", "command"} for a teacher cached before its meta.json recorded them.
    overrides: the instance's Hydra overrides (default INSTANCES[instance]).
    """
    overrides = instance_overrides(instance) if overrides is None else list(overrides)
    cfg = compose([*overrides, "teacher.use_shipped=false"])
    info, report = gate_report(overrides)
    gate = teacher_gate()
    work = teacher_dir(cfg)
    meta = json.loads((work / "meta.json").read_text())
    src = work / "teacher.pt"
    state = torch.load(src, map_location="cpu", weights_only=True)
    pt, js = shipped_files(work.name, folder)
    for old in Path(folder).glob("*.json"):  # an earlier recipe's file of this instance
        if old != js and json.loads(old.read_text()).get("instance") == instance:
            old.with_suffix(".pt").unlink(missing_ok=True)
            old.unlink()
    data = src.read_bytes()
    atomic_write(pt, lambda f: f.write(data))
    by = {**(trained_by or {}), **{k: meta[k] for k in ("commit", "threads", "command", "torch") if k in meta}}
    prov = {
        "name": work.name,
        "instance": instance,
        "overrides": overrides,
        "model": cfg.model.name,
        "key": teacher_key(cfg.model, cfg.data, cfg.teacher),
        **key_parts(cfg.model, cfg.data, cfg.teacher),
        "sha256": sha256_file(pt),
        "bytes": pt.stat().st_size,
        "parameters": sum(v.numel() for v in state.values()),
        "dtypes": sorted({str(v.dtype) for v in state.values()}),
        "clean_top1": report["clean"]["top1"],
        "transform_top1": {k: v["top1"] for k, v in report.items() if k != "clean"},
        "gate": {"clean_min": gate.clean, "transform_min": gate.transformed, "met": gate_met(report, gate)},
        "gate_report": report,
        "fp_top1": meta.get("fp_top1"),
        "train_time_s": meta.get("train_time_s"),
        "epochs": meta.get("epochs"),
        "last_iterate_top1": meta.get("last_iterate_top1"),
        "commit": by.get("commit", "unknown"),
        "torch": by.get("torch", torch.__version__),
        "threads": by.get("threads", "unknown"),
        "command": by.get("command", "unknown"),
        "reproduce": f"python scripts/teachers.py --only {instance} [--check]",
        "shipped_from": info.get("source"),
        "shipped_at_commit": git_sha(),
    }
    atomic_save_json(prov, js)
    return prov


def check(
    instance: str, folder: Path = SHIPPED_DIR, cache_dir: str | None = None, overrides: list[str] | None = None
) -> dict:
    """Trains the instance afresh (in `cache_dir`, default a new temporary folder) and compares it with the shipped
    provenance: {"instance", "recorded", "fresh" (clean and per-transform top-1), "delta", "same_weights",
    "gate_met", "reproduced" (gate met and every |delta| <= CHECK_TOLERANCE)}."""
    overrides = instance_overrides(instance) if overrides is None else list(overrides)
    name = teacher_dir(compose([*overrides, "teacher.use_shipped=false"])).name
    _, js = shipped_files(name, folder)
    if not js.is_file():
        raise FileNotFoundError(f"no shipped teacher {js} to check: ship it first (python scripts/teachers.py)")
    prov = json.loads(js.read_text())
    with tempfile.TemporaryDirectory(prefix="mimiq-teacher-check-") as tmp:
        cache = cache_dir or tmp
        _, report = gate_report(overrides, cache)
        fresh_pt = teacher_dir(compose([*overrides, f"paths.cache_dir={cache}"])).joinpath("teacher.pt")
        same = sha256_file(fresh_pt) == prov["sha256"]
    recorded = {"clean": prov["clean_top1"], **prov["transform_top1"]}
    fresh = {"clean": report["clean"]["top1"], **{k: v["top1"] for k, v in report.items() if k != "clean"}}
    delta = {k: fresh[k] - recorded[k] for k in recorded}
    ok = gate_met(report, teacher_gate()) and all(abs(d) <= CHECK_TOLERANCE for d in delta.values())
    return {
        "instance": instance,
        "recorded": recorded,
        "fresh": fresh,
        "delta": delta,
        "same_weights": same,
        "gate_met": gate_met(report, teacher_gate()),
        "reproduced": ok,
    }


def format_provenance(prov: dict) -> str:
    """One line: name, size, clean and per-transform top-1, gate."""
    tr = ", ".join(f"{k} {v:.2f}" for k, v in prov["transform_top1"].items())
    met = "met" if prov["gate"]["met"] else "NOT met"
    return (
        f"{prov['name']} ({prov['instance']}): {prov['bytes'] / 1e6:.2f} MB, {prov['parameters']:,} parameters, "
        f"clean {prov['clean_top1']:.2f} %, under the transforms {tr} % (gate {met}), "
        f"trained in {prov['train_time_s'] or 0:.0f} s"
    )


def format_check(row: dict) -> str:
    cells = ", ".join(
        f"{k} {row['recorded'][k]:.2f} -> {row['fresh'][k]:.2f} ({row['delta'][k]:+.2f})" for k in row["recorded"]
    )
    verdict = "reproduced" if row["reproduced"] else "NOT reproduced"
    same = "bit-identical weights" if row["same_weights"] else "weights differ"
    return f"{row['instance']}: {cells}; {same}; gate {'met' if row['gate_met'] else 'NOT met'}: {verdict}"
