"""Dense models from upstream OpenMMLab configs: detection (mmdet 3.3) and semantic segmentation (mmseg 1.2.2).

`task.mm_config` names a config shipped inside the installed package (`mmdet::swin/...py`, read from
`mmdet/.mim/configs/`), a config of this repository (`mimiq::<file>`, in `src/mimiq/dense/configs/`) or a file.
`task.mm_overrides` (dotted keys, list indices allowed) is merged into it; then the data paths, loader settings
and evaluator of `task` are written into its test split. The model is built with the package's registry and
loaded strictly from `task.checkpoint` (`mimiq.dense.checkpoint`); `init_cfg` (pretrained-backbone URLs) is
never run, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SCOPES = {"detection": "mmdet", "segmentation": "mmseg"}


def use_scope(task: str) -> str:
    """Registers every module of the task's package and makes it the default registry scope."""
    scope = SCOPES[task]
    from mmengine.registry import init_default_scope

    if scope == "mmdet":
        from mmdet.utils import register_all_modules
    else:
        from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    return scope


def resolve_config_path(name: str) -> Path:
    """`mmdet::x.py` / `mmseg::x.py` (package configs), `mimiq::x.py` (ours) or a path -> the file."""
    if name.startswith("mimiq::"):
        path = CONFIG_DIR / name.split("::", 1)[1]
    elif "::" in name:
        package, rel = name.split("::", 1)
        pkg_dir = Path(__import__(package).__file__).resolve().parent
        path = pkg_dir / ".mim" / "configs" / rel
    else:
        path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"task.mm_config: {name} -> {path} does not exist")
    return path


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})


def build_mm_config(task: DictConfig):
    """The mmengine Config of `task`: upstream config + overrides + our data, loader and evaluator settings."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(resolve_config_path(task.mm_config)))
    overrides = {k: _tuple_if_size(k, v) for k, v in _plain(task.get("mm_overrides")).items()}
    if overrides:
        cfg.merge_from_dict(overrides, allow_list_keys=True)
    loader = cfg.test_dataloader
    loader.batch_size = int(task.eval_batch_size)
    loader.num_workers = int(task.num_workers)
    loader.persistent_workers = int(task.num_workers) > 0
    ds = loader.dataset
    root = str(task.data_root) if task.data_root else ""
    ds.data_root = root
    ds.ann_file = task.ann_file
    ds.data_prefix = _plain(task.data_prefix)
    ds.pop("indices", None)
    if task.name == "detection":
        ds.test_mode = True
        evaluator = cfg.test_evaluator
        evaluator.ann_file = str(Path(root) / task.ann_file)
        evaluator.metric = list(task.eval_metrics)
        evaluator.format_only = False
        evaluator.pop("outfile_prefix", None)
    else:
        cfg.test_evaluator.iou_metrics = list(task.eval_metrics)
    return cfg


TUPLE_FIELDS = ("scale", "img_scale", "crop_size", "size", "img_size")  # mm fields that must be (w, h) tuples


def _tuple_if_size(key: str, value):
    """YAML has no tuples, and mm transforms type-check sizes (`Resize.scale` must be a tuple, FPN's
    `in_channels` a list): a list given for a size field becomes a tuple, everything else is left as it is."""
    if key.rsplit(".", 1)[-1] in TUPLE_FIELDS and isinstance(value, list):
        return tuple(value)
    return value


def build_dense_model(task: DictConfig, mm_cfg=None) -> tuple[nn.Module, str]:
    """The FP detector / segmentor of `task` in eval mode, weights from `task.checkpoint` (strict).

    Returns:
        (model, weights) where weights is "mm" / "official-swin" (checkpoint layout) or "random" (tests only,
        `task.random_init`).
    """
    from mimiq.dense.checkpoint import load_dense_checkpoint

    use_scope(task.name)
    mm_cfg = mm_cfg or build_mm_config(task)
    from mmengine.registry import MODELS

    model = MODELS.build(mm_cfg.model)
    if task.checkpoint:
        weights = load_dense_checkpoint(model, task.checkpoint)
    elif task.random_init:
        weights = "random"
    else:
        raise ValueError("task.checkpoint is required (a detector / segmentor weight file)")
    return model.eval(), weights


def data_preprocessor_stats(model: nn.Module) -> tuple[list[float], list[float]]:
    """(mean, std) per RGB channel in 0-255 pixel units, as the model's data preprocessor normalises."""
    dp = model.data_preprocessor
    if not getattr(dp, "_enable_normalize", True):
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    return dp.mean.flatten().tolist(), dp.std.flatten().tolist()
