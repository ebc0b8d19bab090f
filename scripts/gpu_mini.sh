#!/usr/bin/env bash
# The mini task at the paper's generator budget on one GPU (conf/budget/gpu_mini.yaml), sized for one 10-minute
# command: the ViT mini teacher (trained here if not cached), MimiQ and PSAQ-ViT sets of 10k images x 2000
# iterations, and W4/A4 QAT for MimiQ + HSAD, PSAQ-ViT + KD and noise + KD; metrics under results/mini-gpu/.
#   scripts/gpu_mini.sh [extra hydra overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/mini-gpu}
mkdir -p "$OUT"
for row in "generator=mimiq distill=mimiq" "generator=psaq distill=kd" "generator=noise distill=kd"; do
  name=$(echo "$row" | tr ' =' '__')
  # shellcheck disable=SC2086
  $PY train.py budget=gpu_mini device=cuda $row "hydra.run.dir=$OUT/$name" "$@"
done
$PY - "$OUT" <<'PY'
import json, sys, pathlib
for p in sorted(pathlib.Path(sys.argv[1]).glob("*/metrics.json")):
    m = json.loads(p.read_text())
    print(f"{p.parent.name}: top-1 {m['top1']:.2f} (PTQ {m['ptq_top1']:.2f}, FP {m['fp_top1']:.2f}), "
          f"agreement {m.get('synth_label_agreement')}, generate {m['time_generate_s']:.0f} s, QAT {m['time_qat_s']:.0f} s")
PY
