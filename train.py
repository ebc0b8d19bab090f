"""MimiQ data-free quantization: `python train.py [group=option ...]`. See README.md and conf/train.yaml.

Several GPUs: `torchrun --nproc_per_node=N train.py ...` (docs/scaling.md, "Several GPUs (DDP)").
"""

import os
import sys
import time

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

RUN_STAMP_ENV = "MIMIQ_RUN_STAMP"  # conf/hydra/default.yaml: the time stamp of hydra.run.dir, if set
# A sweep on the basic launcher runs its jobs in this process: the loaded teacher and its FP evaluation are kept
# between them (Task.teacher_stage's memo, keyed by teacher identity, data, device and precision).
_TEACHER_MEMO: dict = {}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mimiq import pipeline

    metrics = pipeline.run(cfg, out_dir=HydraConfig.get().runtime.output_dir, memo=_TEACHER_MEMO)
    return metrics.get("top1", metrics.get("fp_top1"))


def _join_process_group() -> int:
    """Several processes (torchrun, srun): start the process group before Hydra composes anything, so that
    every rank takes rank 0's time stamp for the run directory (`${now:}` may differ by a second between
    ranks), and only rank 0 writes Hydra's `.hydra/` folder. Returns this process's rank (0 when alone)."""
    from mimiq.utils import dist

    world = dist.init_from_env()
    if world.size == 1:
        return 0
    if any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        sys.exit(
            "train.py under torchrun/srun is one run over all processes; a sweep (-m) of DDP runs goes "
            "through the SLURM launcher (hydra.launcher.tasks_per_node=N hydra.launcher.gpus_per_node=N)"
        )
    os.environ[RUN_STAMP_ENV] = dist.broadcast_object(time.strftime("%Y-%m-%d_%H-%M-%S"))
    if world.rank > 0:
        sys.argv.append("hydra.output_subdir=null")
    return world.rank


if __name__ == "__main__":
    if _join_process_group() > 0:  # ranks > 0 print nothing; their warnings and errors still reach stderr
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (open for the life of the process)
    main()
