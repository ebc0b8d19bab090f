"""Which compute budget a run uses (conf/budget/): its name and the values that size the run, in one line.

train.yaml picks `budget: auto/${task}_${data}`: the mini budget on the embedded mini task (task=classification
data=mini) and the paper's everywhere else, unless `budget=mini|paper` is named on the CLI or in an experiment.
Each budget file sets the top-level `budget_name`.
"""

from __future__ import annotations

from omegaconf import DictConfig


def _num(x: float) -> str:
    """2.5e-4 -> '2.5e-4', 0.001 -> '0.001', 0.1 -> '0.1'."""
    x = float(x)
    if x and abs(x) < 1e-3:
        mantissa, exp = f"{x:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{x:.3g}"


def budget_summary(cfg: DictConfig) -> str:
    """e.g. 'budget mini: generator 256 images x 96 iterations, QAT 6 epochs x batch 32, lr 2.5e-4 (cosine), bf16'.

    The values are the composed config's (an experiment's or the CLI's overrides included); the name is the
    budget file's (`unnamed` for a config composed without one).
    """
    g, q, o = cfg.generator, cfg.qat, cfg.optim
    name = cfg.get("budget_name") or "unnamed"
    schedule = f" ({o.schedule})" if o.get("schedule") else ""
    return (
        f"budget {name}: generator {g.num_images} images x {g.iterations} iterations, "
        f"QAT {q.epochs} epochs x batch {q.batch_size}, lr {_num(o.lr)}{schedule}, {cfg.get('precision', 'fp32')}"
    )
