"""MimiQ data-free quantization: `python train.py [group=option ...]`. See README.md and conf/train.yaml."""

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from mimiq import pipeline

    metrics = pipeline.run(cfg, out_dir=HydraConfig.get().runtime.output_dir)
    return metrics.get("top1", metrics.get("fp_top1"))


if __name__ == "__main__":
    main()
