"""Teachers shipped with the package (`src/mimiq/teachers/`): trained mini teachers, so that a run does not train one.

    <model>-<key>.pt    the fp32 state dict of `<cache>/teachers/<model>-<key>/teacher.pt` (the same bytes)
    <model>-<key>.json  its provenance: what it is (key, recipe, architecture, sha256), how it was made (command,
                        commit, torch, threads, train time) and what it measures on the real test split (clean and
                        per-transform top-1: the invariance gate)

`<model>-<key>` is the name of the config's teacher cache folder (`mimiq.models.teacher.teacher_dir`), so a config
finds only the file of its own recipe and architecture. A file that is found is used only if its provenance names
the same key, model, recipe and architecture and its sha256 is the recorded one: any mismatch is an error naming
the file, never a silent fallback to another teacher. `python scripts/teachers.py` (`make teachers`) writes them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parents[1] / "teachers"
HOW = "Re-ship it with `python scripts/teachers.py` (make teachers), or run with teacher.use_shipped=false."


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_files(name: str, folder: Path | None = None) -> tuple[Path, Path]:
    """(weights, provenance) paths of the shipped teacher `name` (`<model>-<key>`) in `folder` (SHIPPED_DIR)."""
    folder = Path(folder or SHIPPED_DIR)
    return folder / f"{name}.pt", folder / f"{name}.json"


def read_provenance(name: str, folder: Path | None = None) -> dict | None:
    """The provenance of the shipped teacher `name`, or None when none is shipped (neither file exists)."""
    pt, js = shipped_files(name, folder)
    if not pt.is_file() and not js.is_file():
        return None
    if not (pt.is_file() and js.is_file()):
        have, miss = (pt, js) if pt.is_file() else (js, pt)
        raise FileNotFoundError(f"shipped teacher {have} has no {miss.suffix} beside it ({miss}). {HOW}")
    try:
        return json.loads(js.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise RuntimeError(f"shipped teacher provenance {js} is unreadable ({e}). {HOW}") from e


def mismatches(recorded: dict, expected: dict, prefix: str = "") -> list[str]:
    """'field: recorded X, config Y' for every field of `expected` whose value in `recorded` differs, nested dicts
    field by field (JSON-normalised: tuples and lists compare equal)."""

    def norm(v):
        return json.loads(json.dumps(v, sort_keys=True, default=str))

    out = []
    for k, v in expected.items():
        r, v = norm(recorded.get(k)), norm(v)
        if isinstance(r, dict) and isinstance(v, dict):
            out += mismatches(r, {**{x: None for x in r}, **v}, f"{prefix}{k}.")
        elif r != v:
            out.append(f"{prefix}{k}: recorded {r!r}, config {v!r}")
    return out


def verify_shipped(name: str, prov: dict, expected: dict, folder: Path | None = None) -> Path:
    """Checks the shipped teacher `name` against its provenance and the config; returns its weights path.

    expected: the config's identity of the teacher ({"key", "model", "timm_name", "arch", "recipe", ...}), compared
    field by field with the provenance. Raises ValueError on any difference or a sha256 that is not the recorded one.
    """
    pt, js = shipped_files(name, folder)
    diff = mismatches(prov, expected)
    if diff:
        raise ValueError(
            f"shipped teacher {pt} does not match this config (its provenance {js.name} records another teacher): "
            + "; ".join(diff)
            + f". {HOW}"
        )
    digest = sha256_file(pt)
    if digest != prov.get("sha256"):
        raise ValueError(
            f"shipped teacher {pt} has sha256 {digest}, its provenance {js.name} records {prov.get('sha256')}: "
            f"the weights were changed after shipping. {HOW}"
        )
    return pt
