"""The paper experiments: each composes with the bits options, carries the paper code's protocol, and every table
command composes into runs that its own table picks up (`mimiq.report.configs`, `make check-configs`)."""

from functools import cache

import pytest
from omegaconf import OmegaConf

from mimiq.config import CONF_DIR, compose
from mimiq.report import configs
from mimiq.report.tables import MODELS

EXP_DIR = CONF_DIR / "experiment"
PAPER = sorted(p.stem for p in EXP_DIR.glob("*.yaml") if p.stem.startswith(("tab", "abl_")))
BITS = configs.options("bits")
TABLES = configs.tables()
# QAT epochs: DeiT-S 100 and DeiT-B 200 come from the paper code's hocon configs; the rest by size
# (a best reading).
EPOCHS = {"tiny": 100, "small": 100, "base": 200}


@cache
def cfg_of(exp: str, bits: str):
    return compose([f"experiment={exp}", f"bits={bits}"])


def test_paper_experiments_exist():
    models = {OmegaConf.load(EXP_DIR / f"{e}.yaml").defaults[0]["override /model"] for e in PAPER}
    assert models == set(MODELS), "one tab2 file per paper model"
    assert {t.experiments for t in TABLES.values()} <= {*PAPER, "tab2_*", "dense_*rcnn*", "dense_upernet_*"}


@pytest.mark.parametrize("exp", PAPER)
def test_experiment_composes_with_bits(exp):
    """Each experiment with one bits option (rotating, so every option is used); the CLI bits win over the
    experiment's. All experiments x all bits: the slow test below and `make check-configs`."""
    bits = BITS[PAPER.index(exp) % len(BITS)]
    cfg = cfg_of(exp, bits)
    want = OmegaConf.load(CONF_DIR / "bits" / f"{bits}.yaml")
    assert (cfg.quant.w_bits, cfg.quant.a_bits) == (want.w_bits, want.a_bits)
    assert cfg.experiment_name == exp and "paper" in cfg.tags


@pytest.mark.parametrize("exp", PAPER)
def test_paper_protocol(exp):
    """The paper code's numbers (generation, QAT; docs/method.md) in the composed config, not only in the files."""
    c = cfg_of(exp, "w4a4")
    assert c.data.name == "imagenet" and c.data.eval_transform == "mimiq" and c.model.pretrained
    assert c.budget_name == "paper"  # conf/budget/paper.yaml: no scaled-down generator/QAT values
    g = c.generator  # generation: 10k images, 2000 iterations, batch 16, loss 1 IH + 1 CE + 2.5e-5 TV, AdamW lr 0.1
    assert (g.name, g.num_images, g.iterations, g.batch_size) == ("mimiq", 10000, 2000, 16)
    assert (g.w_interhead, g.w_ce, g.w_tv, g.lr) == (1.0, 1.0, 2.5e-5, 0.1)
    d = c.distill  # QAT loss: T^2 KL(T = 5) + gamma 10 HSAD (SSIM), no CE
    assert (d.name, d.temperature, d.hsad_scale, d.kd_scale, d.ce_scale, d.distance) == (
        "mimiq",
        5.0,
        10.0,
        1.0,
        0.0,
        "ssim",
    )
    o = c.optim  # the paper code's defaults and README example: SGD-Nesterov 0.9, wd 0,
    # lr 1e-3, x0.1 at epochs 50 and 100
    assert (o.name, o.lr, o.momentum, o.nesterov, o.weight_decay) == ("sgd", 1e-3, 0.9, True, 0.0)
    assert (o.schedule, list(o.milestones), o.gamma) == ("multi_step", [50, 100], 0.1)
    q = c.qat  # batch 16, LSQ warm-up: steps from epoch 2
    assert (q.batch_size, q.no_step_epochs, q.epochs) == (16, 2, EPOCHS[c.model.name.split("_")[1]])
    assert (c.quant.name, c.quant.first_last) == ("mimiq", "paper")


@pytest.mark.parametrize("exp", PAPER)
def test_experiment_file_style(exp):
    """Header names the table and the command; only deltas; every number carries a comment."""
    text = (EXP_DIR / f"{exp}.yaml").read_text()
    lines = text.splitlines()
    assert lines[0] == "# @package _global_"
    assert "Tab. 2" in lines[1] or "ablation" in lines[1].lower()
    assert any(f"python train.py -m experiment={exp}" in ln for ln in lines if ln.startswith("#"))
    assert f"experiment_name: {exp}" in lines
    for ln in lines:
        body = ln.split("#")[0]
        value = body.split(":", 1)[1].strip() if ":" in body else ""
        if value.replace(".", "", 1).replace("e-", "", 1).isdigit():
            assert "#" in ln, f"{exp}: number without a comment: {ln}"
        assert len(ln) <= 110, f"{exp}: line longer than 110: {ln}"


@pytest.mark.parametrize("name", list(TABLES))
def test_table_commands_compose(name):
    """One job per row of every table's commands composes, and its own table files it under that row."""
    cmds, errors = configs.check_table(name, first_only=True)
    assert not errors, "\n".join(errors)
    assert all(jobs >= 3 for _, jobs in cmds)  # >= 3 seeds per command


def test_expand_sweeps():
    jobs = configs.expand(["experiment=glob(tab2_deit_*)", "bits=w4a4,w3a3", "seed=0,1,2", "distill=kd"])
    assert len(jobs) == 3 * 2 * 3 and ["experiment=tab2_deit_b", "bits=w4a4", "seed=0", "distill=kd"] in jobs


@pytest.mark.slow
def test_every_experiment_with_every_bits_and_every_table_job():
    n, errors = configs.check_experiments()
    assert n == len(configs.options("experiment")) * len(BITS)
    for name in TABLES:
        errors += configs.check_table(name)[1]
    assert not errors, "\n".join(errors)
