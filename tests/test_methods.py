"""The registry as data: conf/method/ (a paper row: generator + distill + its identity block) and conf/generator/
(the generator's values + its facts). Every entry composes and is known to report/ and the bench; `method=<id>`
composes to the same run as the generator / distill (and settings) it names, with only its identity block added;
the caches keep their keys; and a method added only through conf (a dummy, on a Hydra search path) appears in the
bench's cell grid, its records, its tables and figure, and in a paper table and its commands."""

import json
from pathlib import Path

import pytest
from matplotlib.colors import is_color_like
from omegaconf import OmegaConf

from mimiq.config import CONF_DIR, compose
from mimiq.models.teacher import teacher_key
from mimiq.report import bench, mini, paper, stats
from mimiq.report.methods import BLOCK, GRIDS, LEGACY_LABEL_KEY, ROLES, ROW_SETS, load_generators, load_methods
from mimiq.report.tables import BASE_METHOD, paper_tables
from mimiq.report.targets import baseline_ids, load_targets
from mimiq.synth.augment import TRANSFORMS
from mimiq.synth.cache import set_key
from mimiq.synth.generate import GENERATORS

METHODS, GENS, SPEC = load_methods(CONF_DIR), load_generators(CONF_DIR), load_targets()
TABLES = paper_tables(METHODS)


def old_way(m) -> list[str]:
    """The overrides that selected this row before the method group existed."""
    return [f"generator={m.generator}", f"distill={m.distill}", *(f"{k}={v}" for k, v in m.settings.items())]


def test_registry_files_carry_comments():
    assert {"noise_kd", "psaq", "psaq_v2", "mimiq_kd", "mimiq", "real_kd", "real_hsad"} <= set(METHODS)
    for path in sorted([*Path(CONF_DIR, "method").glob("*.yaml"), *Path(CONF_DIR, "generator").glob("*.yaml")]):
        lines = path.read_text().splitlines()
        assert path.parent.name == "generator" or lines[0] == "# @package _global_", path
        body = [ln for ln in lines if ln.split("#")[0].strip() and not ln.strip().startswith("#")]
        values = [ln for ln in body if not ln.split("#")[0].rstrip().endswith(":")]  # leaves, not map headers
        values = [ln for ln in values if not ln.startswith("name:")]  # a generator's name needs no comment
        assert all("#" in ln for ln in values), f"{path}: a value without its comment"
        assert all(len(ln) <= 120 for ln in lines), path


@pytest.mark.parametrize("mid", sorted(METHODS))
def test_method_composes_and_is_known_to_report_and_bench(mid):
    m = METHODS[mid]
    cfg = compose([f"method={mid}"])
    assert (cfg.generator.name, cfg.distill.name, cfg[BLOCK].label) == (m.generator, m.distill, m.label)
    assert all(OmegaConf.select(cfg, k) == v for k, v in m.settings.items())
    assert m.generator in GENS and m.role in ROLES and is_color_like(m.colour) and set(m.grids) <= set(GRIDS)
    for grid in m.grids:  # a bench row: in its grid, in the cells, and the cell composes to this method
        assert m in bench.rows(METHODS, grid)
        (cell,) = bench.grid_cells(["vit_mini"], [m], [SPEC.headline], [0], False, SPEC.headline)
        assert compose(bench.cell_overrides(*cell))[BLOCK].label == m.label
    for row_set, rows in m.tables.items():  # a paper-table row: in every table of its row set
        assert row_set in ROW_SETS and rows
        for table in (t for name, t in TABLES.items() if name.startswith(row_set)):
            assert {r.label for r in rows} <= {r.label for r in table.rows}
    assert (mid in baseline_ids(METHODS, SPEC)) == (m.role in SPEC.accuracy.best_baseline_roles)


def test_methods_differ_in_colour_and_order():
    assert len({m.colour for m in METHODS.values()}) == len(METHODS)  # one colour per row in every figure
    assert len({m.order for m in METHODS.values()}) == len(METHODS)
    assert len({g.order for g in GENS.values()}) == len(GENS)
    for row_set in ROW_SETS:  # one row per position of a table
        positions = [r.position for m in METHODS.values() for r in m.tables.get(row_set, ())]
        assert positions and len(set(positions)) == len(positions), row_set
    assert [m.id for m in METHODS.values() if m.role == "ours"] == ["mimiq"]
    for names in (SPEC.teacher.generators, SPEC.similarity.at_least, SPEC.similarity.below):
        assert set(names) <= set(GENS)
    assert {SPEC.accuracy.floor, SPEC.accuracy.without_hsad} <= set(METHODS)


@pytest.mark.parametrize("name", sorted(GENS))
def test_generator_composes_and_its_facts_match_the_registry(name):
    g, cfg = GENS[name], compose([f"generator={name}"])
    assert cfg.generator.name == name and name in GENERATORS  # its module's entry in mimiq.synth.generate
    assert g.optimises_pixels == GENERATORS[name][1]  # the fact agrees with the batch function's registry entry
    assert g.transform is None or g.transform in TRANSFORMS
    assert (g.transform is None) == (not g.optimises_pixels)  # only optimised images are transformed per step
    stripped = cfg.copy()
    OmegaConf.set_struct(stripped, False)
    stripped.generator.pop("facts")
    assert set_key(stripped) == set_key(cfg)  # no image depends on the facts: the cache keeps its key
    assert name in bench.similarity_sources(GENS, {name})  # measured by the bench's attention analysis when used


def test_no_method_adds_no_key():
    assert BLOCK not in compose() and BLOCK not in compose(["generator=psaq", "distill=kd"])


CELLS = [  # (teacher instance, method, bits, seed, bench-quick budget)
    ("vit_mini", "psaq", "w4a4", 0, False),
    ("vit_mini.t1", "mimiq", "w3a3", 1, False),
    ("swin_mini", "noise_kd", "w4a4", 2, False),
    ("vit_mini", "real_hsad", "w5a5", 0, True),
    ("vit_mini", "mimiq_kd", "w4a4", 0, True),
    ("vit_mini", "psaq_v2", "w2a4", 0, False),
]


@pytest.mark.parametrize("cell", CELLS, ids=lambda c: "-".join(map(str, c[:4])))
def test_bench_cell_composes_as_before(cell):
    """A bench cell with method=<id> against the same cell with generator=/distill= (how the bench selected rows
    before the method group): the resolved configs are the same but for the identity block, `outcome` (the
    read-back test of finished runs under logs/bench) is equal, and so are the synthetic-set and teacher cache
    keys."""
    teacher, mid, bits, seed, quick = cell
    extra = list(bench.QUICK_BUDGET) if quick else []
    overrides = bench.cell_overrides(teacher, mid, bits, seed)
    new = compose([*extra, *overrides])
    old = compose([*extra, *[o for o in overrides if not o.startswith("method=")], *old_way(METHODS[mid])])
    assert bench.outcome(new) == bench.outcome(old)
    a, b = OmegaConf.to_container(new, resolve=True), OmegaConf.to_container(old, resolve=True)
    assert a.pop(BLOCK)["label"] == METHODS[mid].label and a == b  # the identity block is the only new key
    assert set_key(new) == set_key(old)
    assert teacher_key(new.model, new.data, new.teacher) == teacher_key(old.model, old.data, old.teacher)


@pytest.mark.parametrize("saved_as", ["generator/distill", "method_label"])
def test_a_run_saved_before_the_identity_block_is_read_back(tmp_path, monkeypatch, saved_as):
    """run_cell reads back a finished run whose saved config has no identity block: one selected by
    generator=/distill=, or one saved when a method added only a `method_label`; neither has generator facts."""
    monkeypatch.setattr(bench.pipeline, "run", lambda *a: pytest.fail("a finished run was recomputed"))
    overrides = bench.cell_overrides("vit_mini", "psaq", "w4a4", 0)
    old = OmegaConf.to_container(
        compose([o for o in overrides if not o.startswith("method=")] + old_way(METHODS["psaq"])), resolve=True
    )
    old["generator"].pop("facts")
    if saved_as == "method_label":
        old[LEGACY_LABEL_KEY] = "PSAQ-ViT"
    (tmp_path / "metrics.json").write_text('{"top1": 1.0}')
    OmegaConf.save(OmegaConf.create(old), tmp_path / "config_resolved.yaml")
    assert bench.run_cell(overrides, tmp_path, {}) == {"top1": 1.0}


@pytest.mark.parametrize("exp", ["tab2_vit_b", "abl_components_vit_b", "dense_mask_rcnn_swin_t"])
def test_table_rows_compose_as_their_generator_and_distill(exp):
    """Each method row of the tables, in a paper experiment: method=<id> composes as its old overrides."""
    used = {o.split("=", 1)[1] for t in TABLES.values() for r in t.rows for o in r.overrides if o.startswith("method")}
    for mid in sorted(used):
        new = compose([f"experiment={exp}", f"method={mid}"])
        old = compose([f"experiment={exp}", *old_way(METHODS[mid])])
        assert bench.outcome(new) == bench.outcome(old), mid
        assert new[BLOCK].label == METHODS[mid].label


def test_paper_experiments_run_the_base_method():
    """A paper table's row of BASE_METHOD adds no `method=` to its command: every experiment must select it."""
    for path in sorted(Path(CONF_DIR, "experiment").glob("*.yaml")):
        if path.stem.startswith(("tab2_", "abl_", "dense_")):
            chosen = [d["override /method"] for d in OmegaConf.load(path).defaults if "override /method" in d]
            assert chosen == [BASE_METHOD], path


def test_tables_take_their_rows_from_the_method_group():
    rows = {r.label: r for r in TABLES["imagenet"].rows}
    assert [r.label for r in TABLES["imagenet"].rows][:3] == ["MimiQ", "PSAQ-ViT", "PSAQ-ViT V2"]  # by position
    assert rows["PSAQ-ViT"].overrides == ("method=psaq",) and rows["MimiQ"].overrides == ()  # the experiments' own
    assert rows["Gaussian noise + KD"].match == {"generator": "noise", "distill": "kd"}
    abl = {r.label: r.match for r in TABLES["abl_components"].rows}
    assert abl["MimiQ"]["cfg.generator.w_interhead"] == 1.0 and abl["w/o inter-head"]["cfg.generator.w_interhead"] == 0
    assert abl["w/o HSAD"]["distill"] == "kd"
    dense = {r.label: r for r in TABLES["dense_ade"].rows}
    assert dense["MimiQ (classifier-made images)"].overrides == ("task.synth.source=classifier",)
    assert dense["MimiQ (backbone-made images)"].match["cfg.task.synth.source"] == "backbone"


DUMMY = """# @package _global_
defaults:
  - override /generator: noise
  - override /distill: mimiq
method:
  label: Dummy row
  colour: tab:olive
  role: baseline
  order: 25
  bench: {grids: [full, quick]}
  tables: {imagenet: [{position: 2.5, label: Dummy paper row}]}
"""


def test_a_method_added_only_through_conf_reaches_the_bench_and_the_tables(tmp_path, monkeypatch):
    extra_conf = tmp_path / "conf"
    (extra_conf / "method").mkdir(parents=True)
    (extra_conf / "method" / "dummy.yaml").write_text(DUMMY)
    search = f"hydra.searchpath=[file://{extra_conf}]"
    methods = load_methods(CONF_DIR, extra_conf)
    assert "dummy" in methods and "dummy" not in METHODS
    # the bench: a row of both grids, between PSAQ-ViT and PSAQ-ViT V2 (order 25), its cells run through the
    # bench's compose and the pipeline (faked: a top-1 that names the method's label length)
    rows = bench.rows(methods, "quick")
    assert [m.id for m in rows] == ["noise_kd", "psaq", "dummy", "mimiq_kd", "mimiq", "real_kd"]
    cells = bench.grid_cells(["vit_mini"], rows, ["w4a4"], [0, 1], False, SPEC.headline)
    assert [c for c in cells if c[1] == "dummy"] == [("vit_mini", "dummy", "w4a4", 0), ("vit_mini", "dummy", "w4a4", 1)]

    def fake_run(cfg, run_dir, memo):
        top1 = {"Real data + KD": 85.0, "Dummy row": 70.0 + cfg.seed}.get(cfg.method.label, 40.0 + cfg.seed)
        return {"w_bits": 4, "a_bits": 4, "top1": top1, "ptq_top1": 30.0, "fp_top1": 90.0, "time_total_s": 1.0}

    monkeypatch.setattr(bench.pipeline, "run", fake_run)
    records = bench.accuracy_grid(cells, {}, methods, runs=tmp_path / "runs", extra=[search])
    assert {r["top1"] for r in records if r["method"] == "dummy"} == {70.0, 71.0}
    # its tables, figure and targets: a row of accuracy.md and README.md; as a baseline, the best one here
    sim = [{"source": s, "teacher": "vit_mini", "interhead_ssim": 0.1, "interhead_abs_ssim": 0.3} for s in GENS]
    gates = {"vit_mini": {"clean": {"top1": 91.0}, "mimiq": {"top1": 85.0}}}
    out = tmp_path / "mini"
    acc_md, tgt = mini.render(records, sim, gates, methods, load_generators(CONF_DIR), SPEC, out, 1.0, "quick")
    assert "| Dummy row | 70.50 ± 0.71 (n=2) | 30.00 ± 0.00 (n=2) |" in acc_md
    assert "| Dummy row | 70.50 ± 0.71 (n=2) |" in (out / "README.md").read_text()
    assert any("best baseline Dummy row 70.50" in measured for _, measured, _ in tgt)
    assert (out / "accuracy_vs_bits.png").stat().st_size > 0
    pair = stats.paired(records, stats.summary(records), ["vit_mini"], "mimiq", baseline_ids(methods, SPEC), "w4a4")
    assert {b for _, _, b, _ in pair["pairs"]} == {"dummy"}
    # the paper table: its row, at its position, with its command and its runs
    imagenet = paper_tables(methods)["imagenet"]
    assert [r.label for r in imagenet.rows][:4] == ["MimiQ", "PSAQ-ViT", "Dummy paper row", "PSAQ-ViT V2"]
    assert paper.commands(imagenet, rows="Dummy paper row")[0].endswith("method=dummy")
    run = tmp_path / "logs" / "run0"
    (run / ".hydra").mkdir(parents=True)
    rec = {"experiment": "tab2_deit_s", "model": "deit_small_patch16_224", "data": "imagenet", "w_bits": 4}
    rec.update(a_bits=4, generator="noise", distill="mimiq", seed=0, top1=12.5, top1_best=13.0, fp_top1=79.8)
    (run / "metrics.json").write_text(json.dumps(rec))
    (run / ".hydra" / "config.yaml").write_text("{}")
    written = paper.tabulate({"imagenet": imagenet}, ["imagenet"], tmp_path / "logs", tmp_path / "results")
    (cell,) = [c for c in written["imagenet"] if c["method"] == "Dummy paper row"]
    assert (cell["n"], cell["mean"]) == (1, 12.5)
