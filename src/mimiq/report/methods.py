"""The method rows of the paper, read from the Hydra group conf/method/ (their one definition).

A method file is a `# @package _global_` delta: `override /generator: <g>` and `override /distill: <d>` in its
defaults list, `method_label` (the row's name in tables and plots), and optionally settings of those groups (e.g.
`generator.w_interhead: 0.0` for the ablation row without the inter-head term). `python train.py method=<id>` runs
it; the bench and the paper tables read the same files here, to select runs and to write their commands.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

LABEL_KEY = "method_label"  # the only key a method adds to a run's config: a name, no number


def flatten(d: Any, prefix: str) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"<prefix>.a.b": 1}; a non-dict value -> {prefix: value}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}"))
    return out


@dataclass(frozen=True)
class Method:
    """One file of conf/method/: `id` (the file's stem, `method=<id>`), its label, generator and distill options,
    and `settings`: the group values the file sets itself (dotted keys, e.g. "generator.w_interhead")."""

    id: str
    label: str
    generator: str
    distill: str
    settings: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # the generator and distill files' own values

    def value(self, key: str) -> Any:
        """A generator/distill value of this method (dotted key): its own setting, else its group file's."""
        return self.settings.get(key, self.defaults.get(key))

    def match(self, keys: Iterable[str] = ()) -> dict[str, Any]:
        """The record values of a run of this method (metrics.json `generator`/`distill`, and `cfg.<key>` for
        each of `keys` the method's groups have): what a paper table matches a run against."""
        values = {f"cfg.{k}": self.value(k) for k in keys if self.value(k) is not None}  # None: not in its groups
        return {"generator": self.generator, "distill": self.distill, **values}


def load_method(path: Path) -> Method:
    """conf/method/<id>.yaml -> Method (its groups' files are read from the conf folder above it)."""
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    chosen = {}
    for entry in raw.pop("defaults", []):
        for key, value in entry.items() if isinstance(entry, dict) else ():
            chosen[key.removeprefix("override").strip().lstrip("/")] = value
    label = raw.pop(LABEL_KEY, None)
    if not label or not {"generator", "distill"} <= set(chosen):
        raise ValueError(f"{path}: a method file needs `override /generator`, `override /distill` and {LABEL_KEY}")
    conf_dir = path.parent.parent
    defaults = {}
    for group in ("generator", "distill"):
        values = OmegaConf.to_container(OmegaConf.load(conf_dir / group / f"{chosen[group]}.yaml"))
        defaults.update(flatten(values, group))
    settings = {k.removeprefix("."): v for k, v in flatten(raw, "").items()}
    return Method(path.stem, str(label), chosen["generator"], chosen["distill"], settings, defaults)


def load_methods(conf_dir: Path) -> dict[str, Method]:
    """Every method of `conf_dir`/method/, by id (sorted)."""
    return {p.stem: load_method(p) for p in sorted(Path(conf_dir, "method").glob("*.yaml"))}
