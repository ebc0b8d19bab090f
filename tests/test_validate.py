"""mimiq.validate: every numeric field of generator / qat / optim / teacher / distill in its range before compute;
the missing-hub-weights error of models/registry.py."""

from pathlib import Path

import pytest
from conftest import compose_cfg

from mimiq.validate import RULES, Rule, check_numbers, numeric_fields

CONF = Path(__file__).resolve().parents[1] / "conf"

BAD = [
    ("generator.num_images=0", "generator.num_images=0: must be an int >= 1"),
    ("generator.num_images=2.5", "generator.num_images=2.5: must be an int >= 1"),
    ("generator.num_images=many", "generator.num_images='many': must be an int >= 1"),
    ("generator.batch_size=-1", "generator.batch_size=-1: must be an int >= 1"),
    ("generator.iterations=0", "generator.iterations=0: must be an int >= 1"),  # MimiQ optimises pixels
    ("generator.lr=0", "generator.lr=0: must be a float > 0"),
    ("generator.lr=nan", "generator.lr=nan: must be a float > 0"),
    ("generator.w_interhead=-1", "generator.w_interhead=-1: must be a float >= 0"),
    ("generator.betas=[0.9,1.5]", r"generator.betas=\[0.9, 1.5\]: must be a list of 2 values, each a float in \[0, 1"),
    ("generator.betas=[0.9]", r"generator.betas=\[0.9\]: must be a list of 2 values"),
    ("generator.jitter=[-1,2]", r"generator.jitter=\[-1, 2\]: must be a list of one or more values, each an int >= 0"),
    ("generator.flip=1.5", r"generator.flip=1.5: must be a float in \[0, 1\]"),
    ("generator=psaq generator.kde_points=1", "generator.kde_points=1: must be an int >= 2"),
    ("generator=psaq generator.warmup_frac=1.0", r"generator.warmup_frac=1.0: must be a float in \[0, 1\)"),
    ("generator=psaq_v2 generator.student_w_bits=9", r"generator.student_w_bits=9: must be an int in \[2, 8\]"),
    ("qat.epochs=0", "qat.epochs=0: must be an int >= 1"),
    ("qat.batch_size=0", "qat.batch_size=0: must be an int >= 1"),
    ("qat.calib_size=0", "qat.calib_size=0: must be an int >= 1"),
    ("qat.eval_every=0", "qat.eval_every=0: must be an int >= 1"),
    ("qat.no_step_epochs=-1", "qat.no_step_epochs=-1: must be an int >= 0"),
    ("qat.drop_last=3", "qat.drop_last=3: must be true or false"),
    ("qat.augment.crop_scale=[0,1]", r"qat.augment.crop_scale=\[0, 1\]: must be a list of 2 values, each a float in"),
    ("qat.augment.jitter_p=2", r"qat.augment.jitter_p=2: must be a float in \[0, 1\]"),
    ("optim.lr=-0.1", "optim.lr=-0.1: must be a float > 0"),
    ("optim.momentum=1.0", r"optim.momentum=1.0: must be a float in \[0, 1\)"),
    ("optim.gamma=0", r"optim.gamma=0: must be a float in \(0, 1\]"),
    ("optim.milestones=[-5]", r"optim.milestones=\[-5\]: must be a list of one or more values, each an int >= 0"),
    ("optim.min_lr_ratio=1.5", r"optim.min_lr_ratio=1.5: must be a float in \[0, 1\]"),
    ("teacher.epochs=0", "teacher.epochs=0: must be an int >= 1"),
    ("teacher.lr=0", "teacher.lr=0: must be a float > 0"),
    ("teacher.label_smoothing=1", r"teacher.label_smoothing=1: must be a float in \[0, 1\)"),
    ("teacher.invariance.p=1.2", r"teacher.invariance.p=1.2: must be a float in \[0, 1\]"),
    ("teacher.roll=-1", "teacher.roll=-1: must be an int >= 0"),
    ("teacher.outliers.scale=0.5", "teacher.outliers.scale=0.5: must be a float >= 1"),
    ("teacher.use_shipped=1", "teacher.use_shipped=1: must be true or false"),
    ("distill.temperature=0", "distill.temperature=0: must be a float > 0"),
]


@pytest.mark.parametrize("override, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_number_is_refused_with_its_field_and_range(override, message):
    cfg = compose_cfg(["debug=tiny", *override.split()])
    with pytest.raises(ValueError, match=f"^{message}"):
        check_numbers(cfg)


def test_the_pipeline_refuses_a_bad_number_before_any_compute(tiny_cfg, tmp_path, monkeypatch):
    """generator.num_images=0 ended in a ZeroDivisionError in the budget summary."""
    from mimiq import pipeline

    monkeypatch.setattr(pipeline, "budget_summary", lambda cfg: pytest.fail("computed before the check"))
    with pytest.raises(ValueError, match="^generator.num_images=0: must be an int >= 1"):
        pipeline.run(tiny_cfg("generator.num_images=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_iterations_may_be_zero_for_the_generators_that_do_not_optimise():
    for gen in ("noise", "real"):
        check_numbers(compose_cfg([f"generator={gen}", "generator.iterations=0"]))


def _configs() -> list[list[str]]:
    """Every experiment, generator, method, budget and debug preset, composed on the defaults."""
    out = [[]]
    for group in ("experiment", "generator", "method", "budget", "debug", "distill", "optim", "qat"):
        out += [[f"{group}={p.stem}"] for p in sorted((CONF / group).glob("*.yaml"))]
    return out


@pytest.mark.parametrize("overrides", _configs(), ids=lambda o: " ".join(o) or "defaults")
def test_the_defaults_of_every_config_pass_and_every_numeric_field_has_a_rule(overrides):
    cfg = compose_cfg(overrides)
    check_numbers(cfg)
    missing = set(numeric_fields(cfg)) - set(RULES)
    assert not missing, f"numeric fields without a rule in mimiq.validate.RULES: {sorted(missing)}"


@pytest.mark.parametrize(
    "rule, good, bad",
    [
        (Rule("int", 1), [1, 7], [0, 1.0, True, None, "1"]),
        (Rule("float", 0, lo_open=True), [1e-9, 3, 2.5], [0, -1.0, float("inf"), float("nan"), False]),
        (Rule("float", 0, 1, hi_open=True), [0, 0.999], [1, 1.0, -0.01]),
        (Rule("bool"), [True, False], [0, 1, "true"]),
    ],
)
def test_a_rule_accepts_its_range_only(rule, good, bad):
    assert all(rule.ok(v) for v in good) and not any(rule.ok(v) for v in bad)


def test_missing_hub_weights_end_in_one_message_that_says_what_to_do(tmp_path, monkeypatch):
    """Offline without cached weights, huggingface_hub raised a bare LocalEntryNotFoundError."""
    from huggingface_hub import constants

    from mimiq.models.registry import create_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = compose_cfg(["model=deit_small_patch16_224"])
    with pytest.raises(RuntimeError) as e:
        create_model(cfg.model)
    msg = str(e.value)
    assert msg.startswith("model=deit_small_patch16_224: no pretrained weights for timm model 'deit_small_patch16_224'")
    assert "model.checkpoint=<file>" in msg and "HF_HUB_OFFLINE=0" in msg and str(tmp_path) in msg
    assert type(e.value.__cause__).__name__ == "LocalEntryNotFoundError"
