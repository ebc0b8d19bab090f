"""Speed of the real steps (`mimiq.perf`): eager against compiled, side by side, into results/mini/speed.md.

    python scripts/speed.py                                   # CPU: every step, eager and compiled (~10 min)
    python scripts/speed.py --precision fp32,bf16 --threads 1,2 --sweep --converged --profile   # the whole report
    python scripts/speed.py --device cuda --precision fp32,bf16   # one GPU: DeiT-S 224 px -> results/mini/gpu_speed.md

Times the functions the loops call (`mimiq_step`, `psaq_step`, `psaq_v2_step`, `qat_step`) next to the teacher's
bare forward + backward, the FP passes and FP fine-tuning, interleaved, with device sync; compile warm-ups are
reported apart. Measurements are kept by section in the report's .json: a run replaces what it measured.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from mimiq.perf.tool import Options  # noqa: E402


def parse(argv: list[str] | None = None) -> Options:
    d = Options()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=d.device, choices=["cpu", "cuda"])
    ap.add_argument("--compile", default=d.compile, choices=["off", "on", "both"])
    ap.add_argument("--precision", default=d.precision, help="fp32 and/or bf16, comma-separated")
    ap.add_argument("--threads", default=d.threads, help="threads per process; two counts add the threads section")
    ap.add_argument("--generators", default=d.generators, help="generators whose step is timed, comma-separated")
    ap.add_argument("--reps", type=int, default=d.reps, help="interleaved timed calls per step")
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables of a generation and the QAT step")
    ap.add_argument("--sweep", action="store_true", help="the bits sweep train.py -m bits=w4a4,w5a5,w4a8 (mini)")
    ap.add_argument("--converged", action="store_true", help="a converged MimiQ set, eager and compiled")
    ap.add_argument("--no-steps", action="store_true", help="skip the steps section (keep the stored one)")
    ap.add_argument("--model", default=None, help="a conf/model name (default: vit_mini; cuda: DeiT-S)")
    ap.add_argument("--out", type=Path, default=None, help="the report (default results/mini/[gpu_]speed.md)")
    ap.add_argument("--warm-cache", action="store_true", help="keep inductor's cache (warm-ups are then not cold)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the steps' config, e.g. bits=w4a8")
    a = ap.parse_args(argv)
    return Options(
        device=a.device,
        compile=a.compile,
        precision=a.precision,
        threads=a.threads,
        generators=a.generators,
        reps=a.reps,
        steps=not a.no_steps,
        profile=a.profile,
        sweep=a.sweep,
        converged=a.converged,
        model=a.model,
        overrides=a.overrides,
        out=a.out,
        warm_cache=a.warm_cache,
    )


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    import torch

    if opts.device == "cuda" and not torch.cuda.is_available():
        print("scripts/speed.py --device cuda: skipped, CUDA is not available on this machine", file=sys.stderr)
        return 0
    from mimiq.perf.tool import run as measure

    print(measure(opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
