"""The registry as data: the method rows of conf/method/ and the generator facts of conf/generator/.

A method file is a `# @package _global_` delta: `override /generator: <g>` and `override /distill: <d>` in its
defaults list, a `method:` block (its identity for the reports: label, colour, role, order, bench grids, paper-table
rows; no number of a run reads it), and optionally settings of those groups (e.g. `generator.w_interhead: 0.0` for
the ablation row without the inter-head term). `python train.py method=<id>` runs it; the bench, the paper tables,
the figures and the targets read the same files here.

A generator file carries a `facts:` block beside its values: which input transform its steps apply, whether it
optimises pixels, where its labels come from, its position in the reports. No image depends on them (they are left
out of the set's cache key, `mimiq.synth.cache.set_key`).

Adding a generator: its module, its entry in `mimiq.synth.generate.GENERATORS`, conf/generator/<name>.yaml (with
`facts`) and conf/method/<id>.yaml (with `method`). Nothing in report/ or scripts/ names it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

BLOCK = "method"  # the key of a method file's identity block (`cfg.method` in a run of `method=<id>`)
LEGACY_LABEL_KEY = "method_label"  # the label's key in runs saved before the `method` block
ROLES = ("ours", "baseline", "lower_bound", "upper_bound", "ablation")
GRIDS = ("full", "quick")  # mini-bench grids: full (make bench), quick (make bench-quick)
LABELS = (
    "drawn",
    "teacher",
    "dataset",
)  # generator facts.labels: random targets, the teacher's predictions, true labels
ROW_SETS = ("imagenet", "abl_components", "dense")  # paper-table row sets a method can join (mimiq.report.tables)


def flatten(d: Any, prefix: str) -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"<prefix>.a.b": 1}; a non-dict value -> {prefix: value}."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}"))
    return out


@dataclass(frozen=True)
class TableRow:
    """A method's row in a paper table's row set: its position there (1 = first), the paper's label
    (results/paper/<table>.csv), and what it adds to the method's own match and overrides (e.g. a dense-task image
    source: match {"cfg.task.synth.source": "classifier"}, overrides ("task.synth.source=classifier",))."""

    position: float
    label: str
    match: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    """One file of conf/method/: `id` (the file's stem, `method=<id>`), its generator and distill options, its
    identity block and `settings`: the group values the file sets itself (dotted keys, e.g. "generator.w_interhead").
    """

    id: str
    label: str
    generator: str
    distill: str
    settings: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # the generator and distill files' own values
    colour: str = "k"  # matplotlib colour in every figure
    role: str = "baseline"  # one of ROLES: what the targets compare it as
    order: float = 0.0  # position among the rows of the bench, its tables and figures (ascending)
    grids: tuple[str, ...] = ()  # mini-bench grids that run it (GRIDS)
    first_only: bool = False  # the bench's default plan runs it on the first teacher instance's first seed only
    tables: dict[str, tuple[TableRow, ...]] = field(default_factory=dict)  # row set -> its rows there

    def value(self, key: str) -> Any:
        """A generator/distill value of this method (dotted key): its own setting, else its group file's."""
        return self.settings.get(key, self.defaults.get(key))

    def match(self, keys: Iterable[str] = ()) -> dict[str, Any]:
        """The record values of a run of this method (metrics.json `generator`/`distill`, and `cfg.<key>` for
        each of `keys` the method's groups have): what a paper table matches a run against."""
        values = {f"cfg.{k}": self.value(k) for k in keys if self.value(k) is not None}  # None: not in its groups
        return {"generator": self.generator, "distill": self.distill, **values}


@dataclass(frozen=True)
class Generator:
    """The `facts` of one file of conf/generator/ (`generator=<name>`)."""

    name: str
    title: str  # its name in the wording of the targets (e.g. "PSAQ")
    transform: str | None  # its steps' input transform (mimiq.synth.augment.TRANSFORMS; None: none)
    optimises_pixels: bool  # pixels optimised step by step (else drawn once)
    labels: str  # one of LABELS
    order: float  # position among the generators in the bench's tables and figures (ascending)

    @property
    def converges(self) -> bool:
        """Its sets have a convergence target: pixels optimised toward drawn labels (mimiq.synth.quality)."""
        return self.optimises_pixels and self.labels == "drawn"


def _group_file(conf_dirs: tuple[Path, ...], group: str, option: str) -> Path:
    for d in conf_dirs:
        if (p := Path(d, group, f"{option}.yaml")).is_file():
            return p
    raise FileNotFoundError(f"no {group}/{option}.yaml in {', '.join(map(str, conf_dirs))}")


def _check(path: Path, ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(f"{path}: {what}")


def _table_rows(path: Path, raw: dict) -> dict[str, tuple[TableRow, ...]]:
    out = {}
    for row_set, rows in raw.items():
        _check(path, row_set in ROW_SETS, f"method.tables: unknown row set {row_set!r} (one of {ROW_SETS})")
        out[row_set] = tuple(
            TableRow(
                float(r["position"]),
                str(r["label"]),
                flatten(r.get("match") or {}, "cfg") if r.get("match") else {},
                tuple(r.get("overrides") or ()),
            )
            for r in rows
        )
    return out


def load_method(path: Path, conf_dirs: Iterable[Path] = ()) -> Method:
    """conf/method/<id>.yaml -> Method. Its groups' files are read from `conf_dirs` (default: the conf folder
    above it), the first that has them."""
    dirs = tuple(conf_dirs) or (path.parent.parent,)
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    chosen = {}
    for entry in raw.pop("defaults", []):
        for key, value in entry.items() if isinstance(entry, dict) else ():
            chosen[key.removeprefix("override").strip().lstrip("/")] = value
    block = raw.pop(BLOCK, None) or {}
    _check(path, {"generator", "distill"} <= set(chosen), "needs `override /generator` and `override /distill`")
    missing = {"label", "colour", "role", "order"} - set(block)
    _check(path, not missing, f"its `{BLOCK}:` block lacks {sorted(missing)}")
    _check(path, block["role"] in ROLES, f"method.role {block['role']!r} is not one of {ROLES}")
    bench = block.get("bench") or {}
    grids = tuple(bench.get("grids") or ())
    _check(path, set(grids) <= set(GRIDS), f"method.bench.grids {list(grids)}: each one of {GRIDS}")
    defaults = {}
    for group in ("generator", "distill"):
        # resolved alone, i.e. at the paper budget: a budget's own value (`${oc.select:per_generator...,default}`)
        # falls back to the group's default
        values = OmegaConf.to_container(OmegaConf.load(_group_file(dirs, group, chosen[group])), resolve=True)
        defaults.update(flatten(values, group))
    settings = {k.removeprefix("."): v for k, v in flatten(raw, "").items()}
    return Method(
        id=path.stem,
        label=str(block["label"]),
        generator=chosen["generator"],
        distill=chosen["distill"],
        settings=settings,
        defaults=defaults,
        colour=str(block["colour"]),
        role=block["role"],
        order=float(block["order"]),
        grids=grids,
        first_only=bool(bench.get("first_only", False)),
        tables=_table_rows(path, block.get("tables") or {}),
    )


def load_generator(path: Path) -> Generator:
    """conf/generator/<name>.yaml -> its facts."""
    facts = OmegaConf.to_container(OmegaConf.load(path)).get("facts") or {}
    missing = {"title", "transform", "optimises_pixels", "labels", "order"} - set(facts)
    _check(path, not missing, f"its `facts:` block lacks {sorted(missing)}")
    _check(path, facts["labels"] in LABELS, f"facts.labels {facts['labels']!r}: one of {LABELS}")
    return Generator(
        name=path.stem,
        title=str(facts["title"]),
        transform=facts["transform"],
        optimises_pixels=bool(facts["optimises_pixels"]),
        labels=facts["labels"],
        order=float(facts["order"]),
    )


def _options(conf_dirs: tuple[Path, ...], group: str) -> dict[str, Path]:
    """option -> file of `group` over the conf folders (the first folder that has an option wins, as in Hydra)."""
    found: dict[str, Path] = {}
    for d in conf_dirs:
        for p in sorted(Path(d, group).glob("*.yaml")):
            found.setdefault(p.stem, p)
    return found


def load_methods(*conf_dirs: Path) -> dict[str, Method]:
    """Every method of `conf_dirs`/method/ (the repository's conf/ and, e.g., a Hydra search-path folder), by id,
    in their `order`."""
    dirs = tuple(Path(d) for d in conf_dirs)
    methods = [load_method(p, dirs) for p in _options(dirs, "method").values()]
    return {m.id: m for m in sorted(methods, key=lambda m: (m.order, m.id))}


def load_generators(*conf_dirs: Path) -> dict[str, Generator]:
    """The facts of every generator of `conf_dirs`/generator/, by name, in their `order`."""
    gens = [load_generator(p) for p in _options(tuple(Path(d) for d in conf_dirs), "generator").values()]
    return {g.name: g for g in sorted(gens, key=lambda g: (g.order, g.name))}


def with_role(methods: dict[str, Method], *roles: str) -> list[Method]:
    """The methods of these roles, in their order."""
    return [m for m in methods.values() if m.role in roles]


def ours(methods: dict[str, Method]) -> Method:
    """The one method of role `ours` (the paper's method)."""
    found = with_role(methods, "ours")
    if len(found) != 1:
        raise ValueError(f"conf/method/ needs exactly one method of role `ours`, found {[m.id for m in found]}")
    return found[0]
