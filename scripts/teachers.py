"""`make teachers`: (re)make the shipped mini teachers in src/mimiq/teachers/ (weights + provenance).

    python scripts/teachers.py                  # ship every instance: train through the cache (a cached teacher is
                                                # not retrained), measure its gate, write <model>-<key>.pt + .json
    python scripts/teachers.py --check          # train each shipped instance afresh in an empty cache and compare
                                                # with its provenance (exit 1 if one is not reproduced)
    python scripts/teachers.py --only vit_mini  # one instance (vit_mini, vit_mini.t1, swin_mini)

Run one-threaded (OMP_NUM_THREADS=1) to train as the shipped teachers were. --trained-commit/-threads/-command
fill the provenance of a teacher cached before its meta.json recorded them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from mimiq import teachers  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(teachers.INSTANCES), default=list(teachers.INSTANCES))
    p.add_argument("--check", action="store_true", help="train afresh and compare with the shipped provenance")
    p.add_argument("--trained-commit", help="commit a cached teacher was trained at (if its meta.json lacks it)")
    p.add_argument("--trained-threads", type=int, help="threads it was trained with (if its meta.json lacks it)")
    p.add_argument("--trained-command", help="command that trained it (if its meta.json lacks it)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.check:
        rows = [teachers.check(i) for i in a.only]
        print("\n".join(teachers.format_check(r) for r in rows))
        print(json.dumps(rows))
        return 0 if all(r["reproduced"] for r in rows) else 1
    given = {"commit": a.trained_commit, "threads": a.trained_threads, "command": a.trained_command}
    provs = [teachers.ship(i, trained_by={k: v for k, v in given.items() if v is not None}) for i in a.only]
    print("\n".join(teachers.format_provenance(p) for p in provs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
