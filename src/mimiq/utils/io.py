"""Atomic writes and config hashing: nothing half-written ever replaces a good file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: str | Path, write_fn) -> None:
    """`write_fn(binary file)` into a temp file unique to this call (in `path`'s folder), then rename it over
    `path`. Concurrent writers of the same path (e.g. SLURM jobs of one sweep filling one cache) never share a
    temp file; the last rename wins, and the files they write are identical by construction."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never a mix
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """`torch.save` to a temp file in the same folder, then rename over `path`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_json(obj: Any, path: str | Path) -> None:
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
    atomic_write(path, lambda f: f.write(data))


def load_checkpoint(path: str | Path, what: str, how_to_fix: str) -> Any:
    """`torch.load` (weights only) with one clear error naming the file and how to regenerate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. {how_to_fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, permissions ...
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        msg = f"{what} is unreadable or corrupt: {path} ({type(e).__name__}: {reason}). {how_to_fix}"
        raise RuntimeError(msg) from e


def save_training_state(path: str | Path, parts: dict[str, Any], **extra: Any) -> None:
    """Atomically writes a resumable training state: the `state_dict()` of each part (model, optimizer,
    scheduler, by name), torch's global RNG state under "rng", then `extra` (epoch, history, ...)."""
    state = {name: part.state_dict() for name, part in parts.items()}
    atomic_torch_save({**state, "rng": torch.get_rng_state(), **extra}, path)


def load_training_state(path: str | Path, parts: dict[str, Any], what: str, how_to_fix: str) -> dict:
    """Loads a `save_training_state` file into `parts` (by the same names) and restores torch's global RNG;
    returns the whole state. A corrupt file fails with one message naming it, `what` it is and `how_to_fix`."""
    st = load_checkpoint(path, what, how_to_fix)
    for name, part in parts.items():
        part.load_state_dict(st[name])
    torch.set_rng_state(st["rng"])
    return st


def config_hash(*parts: Any, length: int = 12) -> str:
    """Stable short hash of JSON-serialisable config parts (dict key order does not matter)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"
