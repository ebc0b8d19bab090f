"""The compute budget follows the task and data (conf/train.yaml `budget: auto/${task}_${data}`): the mini budget
on the embedded mini task only, the paper's elsewhere; `budget=mini|paper` (CLI or experiment) wins."""

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from mimiq import native_precision
from mimiq.budget import budget_summary
from mimiq.config import CONF_DIR as CONF
from mimiq.config import compose as compose_cfg
from mimiq.distill.qat import qat_steps

MINI = OmegaConf.to_container(OmegaConf.load(CONF / "budget" / "mini.yaml"))
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
IMAGENET = ["model=deit_small_patch16_224", "data=imagenet", "data.root=/x"]


def _leaves(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


SKIP = ("budget_name", "per_generator", "precision")  # per_generator: read by the generator files; precision: a
# resolver, per machine (tests below)
MINI_KEYS = {k: v for k, v in _leaves(MINI).items() if k.split(".")[0] not in SKIP}  # generator.iterations: 192, ...


def _get(cfg, key: str):
    v = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v


def _group_value(cfg, key: str):
    """The value of `key` in its group's file (conf/generator/mimiq.yaml, ...): what no budget patches."""
    group, rest = key.split(".", 1)
    return _get(OmegaConf.load(CONF / group / f"{cfg.hydra.runtime.choices[group]}.yaml"), rest)


def compose(overrides: list[str] = ()):
    return compose_cfg(overrides, return_hydra_config=True)  # hydra.runtime.choices: the group files used


def assert_mini(cfg) -> None:
    assert cfg.budget_name == "mini"
    assert {k: _get(cfg, k) for k in MINI_KEYS} == MINI_KEYS


def assert_paper(cfg) -> None:
    assert cfg.budget_name == "paper"
    assert {k: _get(cfg, k) for k in MINI_KEYS} == {k: _group_value(cfg, k) for k in MINI_KEYS}


def test_mini_budget_patches_generator_qat_and_optim():
    assert {k.split(".")[0] for k in MINI_KEYS} == {"generator", "qat", "optim"}
    cfg = compose_cfg()
    assert MINI_KEYS["generator.iterations"] < 2000 and qat_steps(cfg) >= 500  # QAT counted in optimiser steps


@pytest.mark.parametrize("gen", sorted(MINI["per_generator"]))
def test_mini_budget_gives_a_generator_its_own_values(gen):
    """`per_generator.<name>` of the mini budget (e.g. PSAQ-ViT's pixel lr at 32 px) replaces that generator's paper
    value, on the CLI's budget=mini too; the paper budget keeps the value written in the generator's file."""
    own = MINI["per_generator"][gen]
    raw = OmegaConf.load(CONF / "generator" / f"{gen}.yaml")
    for overrides in ([f"generator={gen}"], [f"generator={gen}", "budget=mini"]):
        assert {k: _get(compose(overrides).generator, k) for k in own} == own
    paper = compose([f"generator={gen}", "budget=paper"]).generator
    for k, v in own.items():
        assert OmegaConf.is_interpolation(raw, k)  # the file reads the budget's value, its own as the default
        default = float(raw._get_node(k)._value().rsplit(",", 1)[1].rstrip("}"))
        assert paper[k] == default != v
    assert compose([f"generator={gen}", f"generator.{next(iter(own))}=0.5"]).generator[next(iter(own))] == 0.5


def test_default_is_the_mini_budget():
    cfg = compose()
    assert (cfg.task.name, cfg.data.name) == ("classification", "mini")
    assert_mini(cfg)


def test_imagenet_runs_the_paper_budget():
    cfg = compose(IMAGENET)
    assert_paper(cfg)
    assert (cfg.generator.num_images, cfg.generator.iterations, cfg.generator.batch_size) == (10000, 2000, 16)
    assert (cfg.qat.epochs, cfg.qat.batch_size, cfg.qat.no_step_epochs) == (100, 16, 2)
    assert (cfg.optim.lr, cfg.optim.schedule) == (1e-3, "multi_step")


def test_named_budget_wins_over_the_data():
    assert_mini(compose([*IMAGENET, "budget=mini"]))
    assert_paper(compose(["budget=paper"]))  # the mini task at paper scale
    assert_mini(compose(["task=detection", "budget=mini"]))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("task", _options("task"))
@pytest.mark.parametrize("data", _options("data"))
def test_every_task_and_data_has_a_budget(task, data):
    """A new task or data option needs conf/budget/auto/<task>_<data>.yaml; only the mini task is mini."""
    cfg = compose([f"task={task}", f"data={data}"])
    (assert_mini if (task, data) == ("classification", "mini") else assert_paper)(cfg)


def _named_budget(exp: str) -> str | None:
    defaults = OmegaConf.load(CONF / "experiment" / f"{exp}.yaml").get("defaults") or []
    return next((d["override /budget"] for d in defaults if "override /budget" in d), None)


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_experiment_budget(exp):
    """Each experiment keeps the budget it had when the mini budget was the default of every run: the paper
    experiments name budget=paper; mini_swin (the mini task) stays mini. A CLI budget= still wins."""
    cfg = compose([f"experiment={exp}"])
    want = _named_budget(exp) or ("mini" if (cfg.task.name, cfg.data.name) == ("classification", "mini") else "paper")
    assert want == ("mini" if exp.startswith("mini_") else "paper")
    assert cfg.budget_name == want
    if want == "mini":
        assert_mini(cfg)
    assert compose([f"experiment={exp}", "budget=mini"]).budget_name == "mini"


def test_budget_summary():
    native = native_precision("auto")  # the mini budget's precision on this machine
    assert budget_summary(compose()) == (
        f"budget mini: generator 256 images x 192 iterations, QAT 32 epochs x batch 16, lr 0.001 (cosine), {native}"
    )
    assert budget_summary(compose(IMAGENET)) == (
        "budget paper: generator 10000 images x 2000 iterations, QAT 100 epochs x batch 16, lr 0.001 (multi_step), fp32"
    )
    cfg = compose(["qat.epochs=3"])  # the composed values, overrides included
    assert "QAT 3 epochs" in budget_summary(cfg)
    with open_dict(cfg):
        del cfg["budget_name"]
    assert budget_summary(cfg).startswith("budget unnamed: ")


def test_the_mini_budget_takes_the_native_precision_and_the_paper_budget_fp32(monkeypatch):
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert compose(["device=cpu"]).precision == ("bf16" if native else "fp32")
        assert compose(["device=cpu", "precision=fp32"]).precision == "fp32"  # the CLI still decides
        assert compose(["device=cpu", *IMAGENET]).precision == "fp32"


def test_gpu_mini_budget_runs_the_papers_generator_budget_on_the_mini_task():
    cfg = compose_cfg(["budget=gpu_mini"])
    assert cfg.budget_name == "gpu_mini" and cfg.data.name == "mini" and cfg.model.name == "vit_mini"
    assert (cfg.generator.num_images, cfg.generator.iterations) == (10000, 2000)  # the paper's set and iterations
    assert cfg.qat.epochs == 100 and cfg.generator.num_images % cfg.generator.batch_size == 0
    assert "budget gpu_mini: generator 10000 images x 2000 iterations" in budget_summary(cfg)
