"""`make export RUN=<run dir>`: exports the student of a finished run (e.g. `make demo`'s MimiQ run) to
`<run dir>/export/`: student.onnx (QDQ graph, run by onnxruntime), student_packed.pt (weights packed to their bit
width; `mimiq.export.pack.load_packed` rebuilds the student bit for bit), export.md (the table, also printed) and
export.json. Needs the optional `export` extra (`make install-export`).

    python scripts/export.py <run dir> [--limit N] [--no-bench] [--rounds R] [--runs N]

A bad input (not a run directory, no finished student, an uncalibrated quantizer, a quantizer, layer or bit width
the exporters do not cover, a missing package) fails with one message before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # the latency benchmark is one-threaded; so is the evaluation

import torch  # noqa: E402

from mimiq.export.qparams import ExportError  # noqa: E402
from mimiq.export.report import TABLE_FILE, export_run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run_dir", help="a finished train.py run directory (holds config_resolved.yaml and student.pt)")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N evaluation images (default: all)")
    p.add_argument("--no-bench", action="store_true", help="skip the latency benchmark")
    p.add_argument("--rounds", type=int, default=7, help="interleaved benchmark rounds (median reported)")
    p.add_argument("--runs", type=int, default=20, help="images per model and round in the benchmark")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        result = export_run(args.run_dir, args.limit, not args.no_bench, args.rounds, args.runs)
    except ExportError as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    with open(os.path.join(result["run_dir"], "export", TABLE_FILE)) as f:
        print(f.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
