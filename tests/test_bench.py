"""The mini benchmark's bookkeeping (mimiq.report.bench, mimiq.report): per-cell statistics, the targets of
results/mini/README.md, the markdown table, the grid and the read-back of finished runs."""

import math
import re
import statistics

import pytest
from omegaconf import OmegaConf

from mimiq.config import CONF_DIR, ROOT, compose
from mimiq.report import bench, mini, stats
from mimiq.report.methods import load_generators, load_methods
from mimiq.report.targets import baseline_ids, load_targets, quality_targets, set_name, strict_paired, targets

METHODS, GENERATORS, SPEC = load_methods(CONF_DIR), load_generators(CONF_DIR), load_targets()
BASELINES = baseline_ids(METHODS, SPEC)


def _rec(method, top1, seed=0, w=4, a=4, teacher="vit_mini", ptq=None):
    return {"method": method, "teacher": teacher, "w_bits": w, "a_bits": a, "seed": seed, "top1": top1, "ptq_top1": ptq}


def test_summary_is_mean_and_sample_std_per_cell():
    s = stats.summary([_rec("mimiq", 80.0, 0), _rec("mimiq", 82.0, 1), _rec("mimiq", 84.0, 2), _rec("psaq", 50.0)])
    mean, std, n = s[("vit_mini", "mimiq", "w4a4")]
    assert (mean, n) == (82.0, 3) and std == pytest.approx(2.0)  # sample std (n - 1) of 80, 82, 84
    assert s[("vit_mini", "psaq", "w4a4")] == (50.0, 0.0, 1)


def _targets(mimiq, mimiq_kd, real, sims):
    recs = [
        _rec("fp", 90.0, w=32, a=32),
        _rec("noise_kd", 60.0),
        _rec("psaq", 70.0),
        _rec("psaq_v2", 65.0),
        _rec("mimiq", mimiq),
        _rec("mimiq_kd", mimiq_kd),
        _rec("real_hsad", real),
        _rec("real_kd", real - 1),
    ]
    sim = [{"source": s, "teacher": "vit_mini", "interhead_ssim": v, "interhead_abs_ssim": v} for s, v in sims.items()]
    rows = targets(stats.summary(recs), sim, ["vit_mini"], METHODS, GENERATORS, SPEC)
    assert all(t.startswith("vit_mini: ") for t, _, _ in rows)  # speed targets live in speed.md (scripts/speed.py)
    return {t.split(":")[1].strip(): ok for t, _, ok in rows}


def test_targets_compute_gap_closure_against_the_best_baseline():
    sims = {"real": 0.5, "noise": 0.4, "psaq": 0.45, "psaq_v2": 0.4, "mimiq": 0.55}
    ok = _targets(mimiq=84.0, mimiq_kd=83.0, real=85.0, sims=sims)  # (84 - 70) / (90 - 70) = 0.7
    assert ok["noise + KD W4/A4 >= 15 points below FP"] and ok["MimiQ closes >= 70 % of the best baseline's gap to FP"]
    assert ok["HSAD beats KD-only (MimiQ data)"] and ok["MimiQ within 2 points of real-data QAT (best real row)"]
    assert ok["MimiQ inter-head |SSIM| (the loss's measure) >= real; noise and PSAQ lower than MimiQ"]
    bad = _targets(mimiq=83.9, mimiq_kd=84.0, real=86.5, sims={**sims, "mimiq": 0.49})
    assert not any(
        bad[k]
        for k in (
            "MimiQ closes >= 70 % of the best baseline's gap to FP",
            "HSAD beats KD-only (MimiQ data)",
            "MimiQ within 2 points of real-data QAT (best real row)",
            "MimiQ inter-head |SSIM| (the loss's measure) >= real; noise and PSAQ lower than MimiQ",
        )
    )


def test_accuracy_markdown_lays_out_methods_by_bits_with_ptq_and_n():
    recs = [
        _rec("fp", 90.0, w=32, a=32),
        _rec("mimiq", 80.0, ptq=60.0),
        _rec("mimiq", 82.0, 1, ptq=62.0),
        _rec("mimiq", 70.0, w=3, a=3),
    ]
    acc, ptq = stats.summary(recs), stats.summary(recs, "ptq_top1")
    methods = [METHODS["mimiq"]]
    md = mini.accuracy_markdown(acc, ptq, ["vit_mini"], methods, ["w4a4", "w3a3"])
    row = next(line for line in md.splitlines() if line.startswith("| MimiQ"))
    assert row == "| MimiQ (generation + HSAD) | 81.00 ± 1.41 (n=2) | 61.00 ± 1.41 (n=2) | 70.00 (n=1) | – |"
    assert "| W4/A4 QAT | PTQ | W3/A3 QAT | PTQ |" in md and not math.isnan(acc[("vit_mini", "fp", "w32a32")][0])


def test_paired_reference_is_a_baseline_run_on_every_seed_of_ours():
    rows = {"psaq": (70, 72, 74), "psaq_v2": (90,), "mimiq": (75, 76, 80)}  # v2: best mean, first seed only
    recs = [_rec(m, v, s) for m, vals in rows.items() for s, v in enumerate(vals)]
    s = stats.summary(recs)
    assert stats.best_baseline(s, "vit_mini", "w4a4", BASELINES) == "psaq_v2"
    p = stats.paired(recs, s, ["vit_mini"], "mimiq", BASELINES, "w4a4")
    assert [(x[2], x[3]) for x in p["pairs"]] == [("psaq", 5), ("psaq", 4), ("psaq", 6)]


def test_paired_difference_uses_one_best_baseline_per_teacher_and_a_t_interval():
    rows = {
        "a": {"psaq": (70, 72, 74), "noise_kd": (60, 90, 60), "mimiq": (75, 76, 80)},
        "b": {"psaq": (50,), "noise_kd": (40,), "mimiq": (53,)},
    }
    recs = [_rec(m, v, s, teacher=t) for t, r in rows.items() for m, vals in r.items() for s, v in enumerate(vals)]
    s = stats.summary(recs)
    assert BASELINES == ["noise_kd", "noise_hsad", "psaq", "psaq_v2"]  # roles lower_bound, baseline, in order
    assert stats.best_baseline(s, "a", "w4a4", BASELINES) == "psaq"  # mean 72 > noise's 70, though noise wins seed 1
    p = stats.paired(recs, s, ["a", "b"], "mimiq", BASELINES, "w4a4")
    d = [x[3] for x in p["pairs"]]
    assert sorted(d) == [3, 4, 5, 6] and p["mean"] == pytest.approx(4.5)
    half = 3.182446 * statistics.stdev(d) / 2  # t(0.975, 3) * s / sqrt(4)
    assert p["ci"] == pytest.approx((4.5 - half, 4.5 + half), rel=1e-5)


def _rows(recs, teachers=("vit_mini",)):
    """The targets of `recs` (QAT and PTQ summaries, both paired comparisons), by target text."""
    acc, ptq = stats.summary(recs), stats.summary(recs, "ptq_top1")
    pair = stats.paired(recs, acc, list(teachers), "mimiq", BASELINES, SPEC.headline)
    strict = strict_paired(recs, acc, ptq, list(teachers), METHODS, SPEC)
    rows = targets(acc, [], list(teachers), METHODS, GENERATORS, SPEC, pair=pair, ptq=ptq, strict=strict)
    return {t: (m, ok) for t, m, ok in rows}


def test_strict_closure_is_against_the_best_baseline_student_ptq_or_qat():
    """PSAQ-ViT has the best QAT row (70), but Noise + KD's PTQ students (75) are better: the strict closure is
    measured against them."""
    recs = [
        _rec("fp", 90.0, w=32, a=32),
        _rec("noise_kd", 60.0, ptq=75.0),
        _rec("psaq", 70.0, ptq=72.0),
        _rec("mimiq", 84.0, ptq=80.0),
    ]
    rows = _rows(recs)
    qat = rows["vit_mini: MimiQ closes >= 70 % of the best baseline's gap to FP"]
    strict = rows[
        "vit_mini: MimiQ closes >= 70 % of the best baseline student's gap to FP (strict: the higher of each "
        "baseline's mean QAT and PTQ top-1)"
    ]
    assert qat == ("MimiQ 84.00, best baseline PSAQ-ViT 70.00, FP 90.00: 70 %", True)  # (84 - 70) / (90 - 70)
    assert strict == ("MimiQ 84.00, best baseline student Noise + KD PTQ 75.00, FP 90.00: 60 %", False)  # 9 / 15
    assert rows["vit_mini: MimiQ QAT above its own PTQ (mean top-1)"] == ("QAT 84.00, PTQ 80.00", True)
    recs[1]["ptq_top1"], recs[2]["ptq_top1"] = 65.0, 68.0  # PSAQ-ViT's QAT row is the best student: both agree
    assert _rows(recs)[next(t for t in rows if "student" in t)][0].startswith(
        "MimiQ 84.00, best baseline student PSAQ-ViT QAT 70.00"
    )
    recs[3]["ptq_top1"] = 84.5  # ours' QAT below its own calibration
    assert _rows(recs)["vit_mini: MimiQ QAT above its own PTQ (mean top-1)"] == ("QAT 84.00, PTQ 84.50", False)


def test_interhead_ablation_must_be_beaten_by_more_than_the_spread_over_seeds():
    assert SPEC.accuracy.without_interhead == "mimiq_no_interhead" and "full" in METHODS["mimiq_no_interhead"].grids
    key = (
        "vit_mini: MimiQ beats MimiQ w/o inter-head by more than the spread over seeds (mean difference > the "
        "larger std)"
    )

    def row(ablation):
        recs = [_rec("fp", 90.0, w=32, a=32), *(_rec("mimiq", v, s) for s, v in enumerate((80.0, 82.0, 84.0)))]
        return _rows(recs + [_rec("mimiq_no_interhead", v, s) for s, v in enumerate(ablation)])[key]

    assert row((78.0, 79.0, 80.0)) == (  # 82 - 79 = 3 > max(2, 1)
        "MimiQ 82.00 ± 2.00 (n=3), MimiQ w/o inter-head 79.00 ± 1.00 (n=3): +3.00 points, spread 2.00",
        True,
    )
    assert row((80.5, 81.0, 81.5))[1] is False  # 82 - 81 = 1 < 2: within ours' spread
    assert row((78.0, 80.0, 88.0))[1] is False  # 82 - 82 = 0 < 5.29
    assert row((60.0,)) == (
        "MimiQ 82.00 ± 2.00 (n=3), MimiQ w/o inter-head 60.00 (n=1): spread not measured (n=1)",
        False,
    )  # far below, but one run has no spread


def test_strict_paired_pairs_each_seed_with_the_best_student_chosen_per_teacher():
    rows = {  # teacher -> method -> (QAT top-1, PTQ top-1) per seed
        "a": {
            "psaq": ((70, 75), (72, 76), (74, 77)),
            "noise_kd": ((60, 50), (90, 50), (60, 50)),
            "mimiq": ((78, 0), (80, 0), (83, 0)),
        },
        "b": {"psaq": ((50, 45),), "noise_kd": ((40, 55),), "mimiq": ((60, 0),)},
    }
    recs = [
        _rec(m, q, s, teacher=t, ptq=p) for t, r in rows.items() for m, v in r.items() for s, (q, p) in enumerate(v)
    ]
    recs += [_rec("fp", 90.0, w=32, a=32, teacher=t) for t in rows]
    acc, ptq = stats.summary(recs), stats.summary(recs, "ptq_top1")
    p = strict_paired(recs, acc, ptq, ["a", "b"], METHODS, SPEC)
    # a: PSAQ-ViT PTQ (mean 76) beats its QAT (72) and noise's QAT (70, though it wins seed 1) and PTQ (50)
    # b: Noise + KD PTQ 55; the differences 78 - 75, 80 - 76, 83 - 77, 60 - 55
    assert [(t, s, b, d) for t, s, b, d in p["pairs"]] == [
        ("a", 0, "psaq.ptq", 3),
        ("a", 1, "psaq.ptq", 4),
        ("a", 2, "psaq.ptq", 6),
        ("b", 0, "noise_kd.ptq", 5),
    ]
    half = 3.182446 * statistics.stdev([3, 4, 6, 5]) / 2  # t(0.975, 3) * s / sqrt(4)
    assert p["mean"] == pytest.approx(4.5) and p["ci"] == pytest.approx((4.5 - half, 4.5 + half), rel=1e-5)
    qat = stats.paired(recs, acc, ["a", "b"], "mimiq", BASELINES, "w4a4")  # the QAT-row line: psaq, psaq
    assert [d for *_, d in qat["pairs"]] == [8, 8, 9, 10] and qat["mean"] == pytest.approx(8.75)
    measured, met = _rows(recs, ["a", "b"])[
        "MimiQ − best baseline student (QAT or PTQ, per teacher), paired over (teacher instance, seed): 95 % "
        "interval above 0"
    ]
    assert met and measured.startswith("+4.50 points") and measured.endswith("over 4 pairs")


def test_set_targets_cover_every_teacher_and_every_converging_set():
    assert set_name(METHODS["mimiq"]) == "mimiq" and set_name(METHODS["mimiq_kd"]) == "mimiq"  # one set
    assert (
        set_name(METHODS["mimiq_no_interhead"])
        == set_name(METHODS["mimiq_no_interhead_kd"])
        == (
            "mimiq[w_interhead=0.0]"  # another set than MimiQ's
        )
    )
    good = {"synth_label_agreement": 90.0, "synth_classes_predicted": 10, "synth_max_class_share": 20.0, "n": 3}
    quality = {
        ("a", "mimiq"): good,
        ("a", "noise"): good,
        ("a", "mimiq[w_interhead=0.0]"): good,
        ("b", "mimiq"): {**good, "synth_max_class_share": 30.0},
    }
    rows = {t.split(" set")[0]: (m, ok) for t, m, ok in quality_targets(quality, SPEC, GENERATORS, ["a", "b", "c"])}
    assert list(rows) == [f"{t}: {g}" for t in "abc" for g in ("mimiq", "mimiq[w_interhead=0.0]")]  # no noise
    assert rows["a: mimiq"][1] and rows["a: mimiq[w_interhead=0.0]"][1] and not rows["b: mimiq"][1]
    assert rows["b: mimiq[w_interhead=0.0]"] == rows["c: mimiq"] == ("no set measured", False)


def test_teacher_instances_map_to_overrides():
    assert bench.teacher_overrides("vit_mini.t1") == ["model=vit_mini", "teacher.seed=1"]
    assert bench.teacher_overrides("swin_mini") == ["experiment=mini_swin"]
    with pytest.raises(ValueError, match="unknown teacher"):
        bench.teacher_overrides("vit_huge")
    cell = bench.cell_overrides("vit_mini.t1", "mimiq_kd", "w4a4", 2)
    assert "seed=2" in cell and "synth_seed=2" in cell  # seeds regenerate the set
    assert "method=mimiq_kd" in cell  # the row is a method of conf/method/
    for extra in ((), bench.QUICK_BUDGET):  # the test split is evaluated once, after the last epoch
        q = compose([*extra, *cell]).qat
        assert q.eval_every == q.epochs


def test_gap_target_is_not_met_when_the_best_baseline_reaches_fp():
    recs = [_rec("fp", 90.0, w=32, a=32), _rec("noise_kd", 93.5), _rec("mimiq", 85.9)]
    (gap,) = [t for t in targets(stats.summary(recs), [], ["vit_mini"], METHODS, GENERATORS, SPEC) if "closes" in t[0]]
    assert gap[2] is False and "no gap" in gap[1]  # (85.9 - 93.5) / (90 - 93.5) > 0.7, but there is nothing to close


def test_default_grid_and_its_worker_shards():
    methods = [METHODS[m] for m in ("noise_kd", "psaq_v2", "mimiq")]
    assert METHODS["psaq_v2"].first_only and not METHODS["mimiq"].first_only  # conf/method/*.yaml method.bench

    def grid(teachers, bits, full, after=1):
        return bench.grid_cells(teachers, methods, bits, [0, 1, 2], full, "w4a4", seeds_after_first=after)

    default = bench.grid_cells(["a", "b"], methods, ["w4a4"], [0, 1, 2], False, "w4a4")  # every seed on every one
    assert len(default) == 2 * 2 * 3 + 1 and sorted(c[3] for c in default if c[0] == "b") == [0, 0, 1, 1, 2, 2]

    cells = grid(["vit_mini", "swin_mini"], ["w4a4", "w3a3"], False)
    vit = [c for c in cells if c[0] == "vit_mini"]
    assert sorted(c[3] for c in vit if c[2] == "w4a4" and c[1] != "psaq_v2") == [0, 0, 1, 1, 2, 2]  # x 3 seeds
    assert sorted(c[3] for c in vit if c[2] == "w3a3") == [0, 0, 0]  # first seed only
    assert sorted((c[2], c[3]) for c in vit if c[1] == "psaq_v2") == [("w3a3", 0), ("w4a4", 0)]
    swin = [c for c in cells if c[0] == "swin_mini"]
    assert sorted((c[1], c[2], c[3]) for c in swin) == [("mimiq", "w4a4", 0), ("noise_kd", "w4a4", 0)]
    shards = [bench.shard_cells(cells, k, 2, METHODS) for k in range(2)]
    assert sorted(shards[0] + shards[1]) == sorted(cells)  # disjoint and complete

    def sets(shard):  # the synthetic sets a shard generates: (teacher, seed, generator)
        return {(c[0], c[3], METHODS[c[1]].generator) for c in shard}

    assert not sets(shards[0]) & sets(shards[1])  # each set is generated by one worker only
    assert {c[0] for c in shards[0]} == {c[0] for c in shards[1]} == {"vit_mini", "swin_mini"}  # teachers spread
    assert bench.shared_teachers(cells, 2, METHODS) == ["vit_mini", "swin_mini"]  # so the parent trains both, once
    assert bench.shared_teachers(cells, 1, METHODS) == []
    one = [c for c in cells if c[0] == "swin_mini" and c[1] == "mimiq"]  # one worker's cells only
    assert bench.shared_teachers(one, 2, METHODS) == []
    ablation = bench.grid_cells(
        ["vit_mini"], [METHODS[m] for m in ("mimiq", "mimiq_no_interhead")], ["w4a4"], [0], False, "w4a4"
    )
    assert [len(bench.shard_cells(ablation, k, 2, METHODS)) for k in range(2)] == [1, 1]  # two sets: two workers
    two = grid(["vit_mini", "swin_mini"], ["w4a4"], False, after=2)
    assert sorted(c[3] for c in two if c[0] == "swin_mini") == [0, 0, 1, 1]
    full = grid(["vit_mini", "swin_mini"], ["w4a4", "w3a3"], True)
    assert len(full) == 2 * 3 * 2 * 3 and len(set(full)) == len(full)


def test_grid_rows_come_from_the_method_files():
    assert [m.id for m in bench.rows(METHODS, "full")] == [
        "noise_kd",
        "psaq",
        "psaq_v2",
        "mimiq_kd",
        "mimiq_no_interhead",
        "mimiq",
        "real_kd",
        "real_hsad",
    ]
    assert [m.id for m in bench.rows(METHODS, "quick")] == ["noise_kd", "psaq", "mimiq_kd", "mimiq", "real_kd"]
    assert [m.id for m in bench.rows(METHODS, "quick", ["psaq_v2", "mimiq"])] == ["mimiq"]  # not a quick row
    with pytest.raises(ValueError, match="unknown bench rows \\['mimiq_no_interhead_kd'\\]"):
        bench.rows(METHODS, "full", ["mimiq_no_interhead_kd"])  # a method, but of no bench grid
    assert bench.map_panels(METHODS) == ["real", "psaq", "mimiq"]  # upper bound, first baseline, ours
    assert bench.similarity_sources(GENERATORS, {"psaq", "mimiq"}) == ["real", "noise", "psaq", "mimiq"]


def test_a_finished_run_of_another_config_is_rerun_not_read_back(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench.pipeline, "run", lambda cfg, run_dir, memo: calls.append(cfg.qat.epochs) or {"new": 1})
    run_dir = tmp_path / "cell"
    overrides = ["bits=w4a4"]
    cfg = compose(overrides)
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"old": 1}')
    OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    assert bench.run_cell(overrides, run_dir, {}) == {"old": 1} and calls == []  # same config: read back
    stale = cfg.copy()
    stale.qat.epochs = cfg.qat.epochs + 1  # e.g. a bench-quick run
    OmegaConf.save(stale, run_dir / "config_resolved.yaml", resolve=True)
    assert bench.run_cell(overrides, run_dir, {}) == {"new": 1} and calls == [cfg.qat.epochs]
    assert not (run_dir / "metrics.json").exists()  # the stale run was removed before rerunning
    run_dir.mkdir(exist_ok=True)
    (run_dir / "metrics.json").write_text('{"old": 1}')
    OmegaConf.save(cfg, run_dir / "config_resolved.yaml", resolve=True)
    assert bench.run_cell([*overrides, "qat.eval_every=7"], run_dir, {}) == {"old": 1}  # evaluation cadence only
    quick = [*bench.QUICK_BUDGET]
    assert bench.run_cell(overrides, run_dir, {}, quick) == {"new": 1}  # the extra overrides are part of the config


def test_readme_links_the_analysis_and_names_only_repository_files():
    pair = {"pairs": [("vit_mini", 0, "psaq", 3.0)], "mean": 3.0, "ci": (1.0, 5.0)}
    sim = [{"teacher": "vit_mini", "source": "mimiq", "interhead_ssim": 0.5, "interhead_abs_ssim": 0.6}]
    spread = [{"method": "MimiQ", "seed_std": 1.0, "seed_n": 3, "teacher_std": None, "teacher_n": 1}]
    text = mini.readme([("t", "m", True)], "acc\n", sim, 60.0, "quick", 120.0, "quality\n", spread, pair)
    assert "[ANALYSIS.md](ANALYSIS.md)" in text and "make bench-quick" in text
    assert not re.search(r"issue \d", text, re.I)  # says what a thing is, not which ticket asked for it
    assert set(re.findall(r"[\w/.-]+\.md\b", text)) <= {"ANALYSIS.md", "speed.md"}  # results/mini/ files only


@pytest.mark.parametrize("precision", ["bf16", None])
def test_readme_states_the_invocations_precision_and_reads_it_back(tmp_path, precision):
    pair = {"pairs": [], "mean": None, "ci": None}
    text = mini.readme([], "acc\n", [], 90.0, "full", 120.0, "q\n", [], pair, 2, None, precision)
    assert (" in bf16;" in text) == (precision == "bf16")
    (tmp_path / "README.md").write_text(text)
    assert mini.invocation(tmp_path) == {"mode": "full", "total_s": 90.0, "cores": 2, "precision": precision}
    assert bench.precision_line("fp32").startswith("bench: runs in fp32 (this device has no native bf16)")


def test_committed_results_re_render_identically(tmp_path):
    """results/mini/ read back (accuracy.csv, attention_similarity.csv, teacher_gate.json, README.md's invocation) and
    rendered again (`scripts/bench.py --render`) gives the committed files: tables, targets and README.md come from
    the records and conf/ (methods, generators, targets) alone. After a change of a label or a target, run
    `--render`."""
    src = ROOT / "results" / "mini"
    records, sim, gates = mini.read_results(src)
    was = mini.invocation(src)
    assert was and was["mode"] in ("full", "quick") and was["total_s"] > 0
    mini.render(records, sim, gates, METHODS, GENERATORS, SPEC, tmp_path, **was)
    for name in ("accuracy.csv", "accuracy.md", "attention_similarity.csv", "teacher_gate.json", "README.md"):
        assert (tmp_path / name).read_text() == (src / name).read_text(), name
    assert mini.invocation(tmp_path) == was


def test_render_command_runs_on_a_copy_of_the_committed_results(tmp_path, monkeypatch):
    """`scripts/bench.py --render` on results/mini/'s files, written to a copy: both closures and both paired lines."""
    import importlib.util
    import shutil

    for name in ("accuracy.csv", "attention_similarity.csv", "teacher_gate.json", "README.md"):
        shutil.copy(ROOT / "results" / "mini" / name, tmp_path / name)
    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "bench.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(bench, "OUT", tmp_path)
    assert script.main(["--render"]) == 0
    text = (tmp_path / "README.md").read_text()
    for t in ("vit_mini", "vit_mini.t1", "swin_mini"):
        assert f"| {t}: MimiQ closes >= 70 % of the best baseline's gap to FP |" in text
        assert f"| {t}: MimiQ closes >= 70 % of the best baseline student's gap to FP (strict" in text
        assert f"| {t}: MimiQ QAT above its own PTQ (mean top-1) |" in text
    assert "| MimiQ − best baseline, paired" in text and "| MimiQ − best baseline student (QAT or PTQ" in text
    assert mini.invocation(tmp_path) == mini.invocation(ROOT / "results" / "mini")


def test_set_targets_agree_with_the_pipelines_convergence_check():
    """mimiq.synth.quality (the pipeline's "below the convergence targets" line) and conf/targets/ state one target."""
    from mimiq.synth import quality

    assert (SPEC.sets.agreement, SPEC.sets.max_class_share) == (quality.AGREEMENT_TARGET, quality.MAX_CLASS_SHARE)


def test_the_bench_end_to_end_on_a_tiny_teacher(tmp_path, monkeypatch, cache_dir):
    """The grid through the real pipeline (debug=tiny as the teacher instance): runs, read back without recompute,
    the teacher gate, the attention analysis and every output of results/mini/, written to a temp folder."""
    monkeypatch.setitem(bench.TEACHER_CONFIGS, "vit_mini", ["debug=tiny"])
    extra = [f"paths.cache_dir={cache_dir}"]
    rows = [METHODS["noise_kd"], METHODS["mimiq"]]
    cells = bench.grid_cells(["vit_mini"], rows, ["w4a4"], [0], False, SPEC.headline)
    records = bench.accuracy_grid(cells, {}, METHODS, runs=tmp_path / "runs", extra=extra)
    assert [r["method"] for r in records] == ["noise_kd", "mimiq", "fp"] and records[1]["qat_steps"] > 0
    monkeypatch.setattr(bench.pipeline, "run", lambda *a: pytest.fail("a finished run was recomputed"))
    assert bench.accuracy_grid(cells, {}, METHODS, runs=tmp_path / "runs", extra=extra) == records
    memo: dict = {}
    gates = bench.teacher_gates(["vit_mini"], SPEC.teacher.generators, memo, extra)
    assert set(gates["vit_mini"]) == {"clean", *SPEC.teacher.generators}
    out = tmp_path / "mini"
    (out / "grids").mkdir(parents=True)
    sources = bench.similarity_sources(GENERATORS, {m.generator for m in rows})
    assert sources == ["real", "noise", "mimiq"]
    sim = bench.attention_analysis(["vit_mini"], sources, ["real", "mimiq"], memo, out, extra)
    assert [r["source"] for r in sim] == sources and (out / "attention_maps.png").is_file()
    acc_md, _ = mini.render(records, sim, gates, METHODS, GENERATORS, SPEC, out, 1.0, "quick")
    labels = [ln.split(" | ")[0][2:] for ln in acc_md.splitlines() if ln.startswith("| ") and "QAT" not in ln]
    assert labels == ["Noise + KD", "MimiQ (generation + HSAD)"]
    back, sim_back, gates_back = mini.read_results(out)  # what --render reads back is what was written
    given = lambda rows: [{k: v for k, v in r.items() if v is not None} for r in rows]  # noqa: E731 (CSV: no None)
    assert (given(back), sim_back, gates_back) == (given(records), sim, gates)
