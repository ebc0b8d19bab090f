"""Datasets: the offline mini task and ImageNet-style folders, behind one `build_dataset` interface."""

from mimiq.data.datasets import build_dataset, build_loader, check_data_cfg

__all__ = ["build_dataset", "build_loader", "check_data_cfg"]
