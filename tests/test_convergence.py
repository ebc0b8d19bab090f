"""Convergence curves of synthetic sets (mimiq.synth.convergence) on a tiny random-init teacher."""

import csv

import pytest
import torch

from mimiq.models.attention import capture
from mimiq.models.registry import model_data_config
from mimiq.models.teacher import load_or_train_teacher
from mimiq.synth.convergence import (
    FIELDS,
    choose_iterations,
    clean_interhead_loss,
    convergence_curve,
    merge_rows,
    plot_convergence,
    point_tasks,
    read_csv,
    write_csv,
)
from mimiq.synth.core import build_context
from mimiq.synth.losses import interhead_loss

CPU = torch.device("cpu")


@pytest.fixture
def setup(tiny_cfg):
    def make(name: str, *overrides: str):
        cfg = tiny_cfg(
            "model.train_teacher=false",
            f"generator={name}",
            "generator.num_images=4",
            "generator.batch_size=4",
            *overrides,
        )
        torch.manual_seed(0)
        return cfg, load_or_train_teacher(cfg, CPU)[0]

    return make


def test_curve_regenerates_per_budget_and_reads_back(setup):
    cfg, teacher = setup("mimiq")
    rows = convergence_curve(teacher, cfg, CPU, [4, 2], "vit_test")
    assert [r["iterations"] for r in rows] == [2, 4]  # sorted, one set per budget
    for r in rows:
        assert set(r) == set(FIELDS)
        assert r["teacher"] == "vit_test" and r["generator"] == "mimiq" and r["num_images"] == 4
        assert 0.0 <= r["label_agreement"] <= 100.0 and 1 <= r["classes_predicted"] <= 10
        assert 0.0 <= r["interhead_loss"] <= 1.0 and r["final_ce"] == r["final_ce"]  # finite CE of the last step
    assert rows[0]["interhead_loss"] != rows[1]["interhead_loss"]  # two different sets, not one reused
    again = convergence_curve(teacher, cfg, CPU, [2, 4], "vit_test")  # from the set cache
    assert [r["interhead_abs_ssim"] for r in again] == [r["interhead_abs_ssim"] for r in rows]


def test_generator_without_optimisation_is_one_point(setup):
    cfg, teacher = setup("noise")
    rows = convergence_curve(teacher, cfg, CPU, [2, 4])
    assert len(rows) == 1 and rows[0]["iterations"] == 0
    assert rows[0]["final_ce"] != rows[0]["final_ce"]  # NaN: no CE term


def test_bad_budgets_fail_before_compute(setup):
    cfg, teacher = setup("psaq")
    with pytest.raises(ValueError, match="rounds"):
        convergence_curve(teacher, cfg, CPU, [3])
    with pytest.raises(ValueError, match="positive"):
        convergence_curve(teacher, cfg, CPU, [0, 2])


def test_clean_interhead_loss_is_the_generators_term_on_the_whole_set(setup):
    cfg, teacher = setup("mimiq")
    ctx = build_context(teacher, cfg, CPU, model_data_config(teacher))
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), capture(ctx.teacher, "matmul_qk") as qk:
        ctx.teacher(x)
        whole = interhead_loss(qk, ctx.grids, ctx.drop_cls).item()
    assert clean_interhead_loss(ctx, x, batch_size=4) == pytest.approx(whole, rel=1e-5)  # chunks 4 + 2, weighted


def _pt(n: int, agreement: float, converged: bool = False) -> dict:
    return {"iterations": n, "label_agreement": agreement, "converged": converged}


def test_choose_iterations():
    # the fewest iterations that meet the targets
    assert choose_iterations([_pt(48, 60), _pt(96, 86, True), _pt(192, 99, True)], cap=192)[0] == 96
    # none converges: where the gain to the next point falls below the threshold
    n, why = choose_iterations([_pt(48, 30), _pt(96, 50), _pt(192, 53)], cap=192)
    assert n == 96 and why.startswith("flattens")
    # still rising: the cap; points above the cap are ignored, even converged ones
    n, why = choose_iterations([_pt(48, 30), _pt(96, 50), _pt(192, 70), _pt(384, 90, True)], cap=192)
    assert (n, why) == (192, "the cap (still rising)")
    with pytest.raises(ValueError, match="cap"):
        choose_iterations([_pt(384, 90, True)], cap=192)


def test_point_tasks_split_curves_into_points_costliest_first():
    todo = point_tasks(["a", "b"], ["noise", "mimiq", "psaq"], {"noise": [48, 96], "mimiq": [96, 48], "psaq": [32]})
    # one unit per optimised point, one per reference set, each (teacher, generator, budget) exactly once
    assert sorted(todo) == sorted(
        [(t, "noise", [48]) for t in "ab"]
        + [(t, "mimiq", [n]) for t in "ab" for n in (48, 96)]
        + [(t, "psaq", [32]) for t in "ab"]
    )
    # the costliest first: MimiQ at 96 (96 x 1), PSAQ-ViT at 32 (32 x 2), MimiQ at 48; the references last
    assert [g for _, g, _ in todo] == ["mimiq", "mimiq", "psaq", "psaq", "mimiq", "mimiq", "noise", "noise"]
    assert [b for _, g, b in todo if g == "mimiq"] == [[96], [96], [48], [48]]


def _row(gen: str, n: int, agreement: float) -> dict:
    ints = ("iterations", "num_images", "seed", "classes_predicted")
    row = {k: (0 if k in ints else 0.5) for k in FIELDS}
    return {
        **row,
        **{"teacher": "t", "generator": gen, "iterations": n, "label_agreement": agreement, "converged": False},
        "precision": "bf16",
    }


def test_csv_round_trip_merge_and_plot(tmp_path):
    rows = [_row("noise", 0, 10.0), _row("mimiq", 2, 52.0), _row("mimiq", 4, 54.0)]
    write_csv(rows, tmp_path / "c.csv")
    read = list(csv.DictReader((tmp_path / "c.csv").open()))
    assert [r["generator"] for r in read] == ["noise", "mimiq", "mimiq"]
    assert float(read[2]["label_agreement"]) == 54.0
    assert read_csv(tmp_path / "c.csv") == rows and read_csv(tmp_path / "none.csv") == []
    merged = merge_rows(rows, [_row("mimiq", 4, 60.0), _row("mimiq", 8, 70.0)])  # 4 measured again, 8 new
    assert [(r["iterations"], r["label_agreement"]) for r in merged] == [(0, 10.0), (2, 52.0), (4, 60.0), (8, 70.0)]
    plot_convergence(rows, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_a_csv_without_the_precision_column_reads_as_fp32_sets(tmp_path):
    write_csv([_row("mimiq", 2, 52.0)], tmp_path / "c.csv")
    lines = [line.rsplit(",", 1)[0] for line in (tmp_path / "c.csv").read_text().splitlines()]  # the last column
    assert lines[0].endswith("time_s")
    (tmp_path / "old.csv").write_text("\n".join(lines) + "\n")
    assert read_csv(tmp_path / "c.csv")[0]["precision"] == "bf16"
    assert read_csv(tmp_path / "old.csv")[0]["precision"] == "fp32"
