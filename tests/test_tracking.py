"""mimiq.tracking: W&B never gets `step=` (its run step only increases); each namespace (synth, qat, eval, ...)
is plotted against its own `<namespace>/step`, declared once with define_metric."""

import pytest
import torch
from conftest import compose_cfg

from mimiq.tracking import Tracker, WandbTracker

wandb = pytest.importorskip("wandb")


class FakeRun:
    """Records what the tracker sends to W&B, in order."""

    def __init__(self):
        self.events: list[tuple] = []  # ("define", name, kwargs) | ("log", row, kwargs) | ("finish",)
        self.summary: dict = {}

    def define_metric(self, name, **kwargs):
        self.events.append(("define", name, kwargs))

    def log(self, data, **kwargs):
        self.events.append(("log", dict(data), kwargs))

    def finish(self):
        self.events.append(("finish",))

    def rows(self) -> list[dict]:
        return [e[1] for e in self.events if e[0] == "log"]

    def defines(self) -> dict[str, dict]:
        return {e[1]: e[2] for e in self.events if e[0] == "define"}


@pytest.fixture
def tracked(monkeypatch, tmp_path):
    run = FakeRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    logger = compose_cfg(["logger=wandb", "logger.mode=disabled"]).logger
    tracker = Tracker.from_cfg(logger, {"seed": 0}, tmp_path)
    assert isinstance(tracker, WandbTracker)
    return tracker, run


def _steps(run: FakeRun, key: str) -> list:
    return [r[key] for r in run.rows() if key in r]


def test_pipeline_order_logs_no_wandb_step(tracked):
    tracker, run = tracked
    with tracker:  # the order of pipeline.run: generation curves, set summary and samples, QAT epochs, eval
        tracker.log_curves("synth", {"loss_ce": [3.0, 2.0, 1.0], "loss_ih": [0.5, 0.25]})
        tracker.log({"synth/interhead_ssim": 0.5, "synth/time_s": 12.0})  # no step: synth's last one
        tracker.images("synth/samples", torch.rand(4, 3, 8, 8))
        for epoch in range(2):
            tracker.log({"eval/top1": 50.0 + epoch, "qat/loss": 1.0 / (epoch + 1)}, step=epoch + 1)
        tracker.log({"eval/box_ap": 40.0})
        tracker.log({"top1": 1.0}, step=5)  # a bare key is its own namespace
        tracker.summary({"top1": 1.0})
    assert run.events[-1] == ("finish",) and run.summary == {"top1": 1.0}

    logs = [e for e in run.events if e[0] == "log"]
    assert logs and all(kwargs == {} for _, _, kwargs in logs), "step= (or commit=) was passed to wandb"
    assert _steps(run, "synth/step") == [0, 1, 2, 2, 2]
    assert _steps(run, "synth/loss_ce") == [3.0, 2.0, 1.0] and _steps(run, "synth/loss_ih") == [0.5, 0.25]
    assert [r["synth/step"] for r in run.rows() if "synth/samples" in r] == [2]
    assert _steps(run, "qat/step") == [1, 2] and _steps(run, "eval/step") == [1, 2, 2]
    assert _steps(run, "top1/step") == [5]

    defines = run.defines()
    for ns in ("synth", "qat", "eval"):
        assert defines[f"{ns}/*"]["step_metric"] == f"{ns}/step", ns
        assert defines[f"{ns}/step"].get("step_metric") is None, ns
    assert defines["top1"]["step_metric"] == "top1/step"
    names = [e[1] for e in run.events if e[0] == "define"]
    assert len(names) == len(set(names)), "define_metric repeated"
    for ns in ("synth", "qat", "eval"):  # declared before the namespace's first row
        define_at = next(i for i, e in enumerate(run.events) if e[:2] == ("define", f"{ns}/*"))
        first_log = next(i for i, e in enumerate(run.events) if e[0] == "log" and f"{ns}/step" in e[1])
        assert define_at < first_log, ns


def test_log_curves_thins_and_offsets(tracked):
    tracker, run = tracked
    tracker.log_curves("synth", {"loss_ce": list(range(10))}, start=100, every=4)
    assert [(r["synth/step"], r["synth/loss_ce"]) for r in run.rows()] == [(100, 0.0), (104, 4.0), (108, 8.0)]
    tracker.log_curves("synth", {})
    assert len(run.rows()) == 3


def test_noop_tracker_takes_the_same_calls(tmp_path):
    t = Tracker.from_cfg(compose_cfg().logger, {}, tmp_path)
    assert type(t) is Tracker
    with t:
        t.log({"synth/loss_ce": 1.0}, step=3)
        t.images("synth/samples", torch.rand(2, 3, 4, 4))
        assert t.log_curves("synth", {"loss_ce": [1.0, 2.0]}) is None


def test_real_wandb_disabled_accepts_the_calls(tmp_path):
    """The calls' signatures against the installed wandb (a disabled run: nothing written or sent)."""
    logger = compose_cfg(["logger=wandb", "logger.mode=disabled"]).logger
    with Tracker.from_cfg(logger, {"seed": 0}, tmp_path) as t:
        t.log_curves("synth", {"loss_ce": [2.0, 1.0]})
        t.log({"qat/loss": 1.0, "eval/top1": 2.0}, step=1)
        t.images("synth/samples", torch.rand(2, 3, 4, 4))
