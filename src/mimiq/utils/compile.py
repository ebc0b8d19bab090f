"""torch.compile of the generation and QAT steps: the `compile` option and the compiled forward of a model.

`compile: off | on | auto` (conf/train.yaml) applies to the models a step runs (the teacher in generation; the
teacher and the student in QAT); losses, input transforms and optimiser steps stay eager. The attention capture
compiles with the model (`mimiq.models.attention`: the modules append to their sinks, no hooks), and
`mimiq.quant.functional` traces its composite fake-quant path under compile. A compiled step gives the eager
step's values to float rounding (inductor reorders and fuses the float ops), not bit for bit.

`auto` compiles a stage when it runs at least `compile_min_steps[<device type>]` steps in the process: the warm-up
(compilation, seconds to minutes) must be paid back by the per-step saving (results/mini/speed.md).
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig
from torch import nn

OPTIONS = ("off", "on", "auto")
RECOMPILE_LIMIT = 64  # compiled variants of one forward function (Dynamo's default, 8, falls back to eager)


def compile_option(cfg: DictConfig) -> str:
    """`cfg.compile` (default off); YAML's unquoted off / on (booleans) read as "off" / "on"."""
    option = cfg.get("compile", "off")
    return {False: "off", True: "on"}.get(option, option) if isinstance(option, bool) else option


def check_compile_cfg(cfg: DictConfig) -> None:
    """One clear error for a bad `compile` / `compile_min_steps` before any compute."""
    option = compile_option(cfg)
    if option not in OPTIONS:
        raise ValueError(f"compile must be one of {', '.join(OPTIONS)}, got {option!r}")
    for device, steps in (cfg.get("compile_min_steps") or {}).items():
        if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
            raise ValueError(f"compile_min_steps.{device} must be an integer >= 0 (steps) or null, got {steps!r}")


def use_compile(cfg: DictConfig, device: torch.device, steps: int) -> bool:
    """Whether a stage of `steps` optimisation steps on `device` runs compiled under `cfg.compile`.

    off: never; on: always; auto: when `steps` reaches `cfg.compile_min_steps[device.type]` (a device type
    missing there, or null: never).
    """
    check_compile_cfg(cfg)
    option = compile_option(cfg)
    if option != "auto":
        return option == "on"
    threshold = (cfg.get("compile_min_steps") or {}).get(device.type)
    return threshold is not None and steps >= threshold


def compiled(model: nn.Module) -> nn.Module:
    """`model` under torch.compile (inductor, static shapes: a new batch size compiles once more).

    The wrapper shares the model's parameters and state; calling it runs the compiled forward (the first call
    compiles: the warm-up). Every variant of one forward (grad or not, capture kind, batch size, autocast, the
    teacher and its students share timm's forward code) is one more entry of Dynamo's cache: the limit is raised
    to RECOMPILE_LIMIT so that a run never falls back to eager silently.
    """
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(model, dynamic=False)
