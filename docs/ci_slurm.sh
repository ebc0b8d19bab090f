# Snippet for .ci/run (issue 7, SLURM): paste after `python3 --version`, before `make test`.
# It brings up the real single-node SLURM cluster that tests/test_slurm.py submits to, and tears it down when
# .ci/run exits, whatever the tests did (an EXIT trap keeps the script's own exit code).
# Cost on the 2-CPU sandbox: `up` 61 s cold (47 s of it apt download + install of 28 packages), 3.4 s with the
# packages installed; `smoke` 2.5 s; `down` 8 s. tests/test_slurm.py itself takes about 3 min.
# Needs root (slurmd setuids to the job's user); uses localhost ports 6817-6819 and 13306.
SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
slurm_down() {
  local t
  t=$(date +%s)
  $SUDO scripts/slurm_local.sh down || true
  echo "CI: SLURM cluster down in $(( $(date +%s) - t )) s"
}
trap slurm_down EXIT
slurm_t0=$(date +%s)
$SUDO scripts/slurm_local.sh up      # fails CI here, with the daemon's log path, if the cluster cannot start
$SUDO scripts/slurm_local.sh smoke   # one srun + one sbatch --wait job, checked through sacct
echo "CI: SLURM cluster up in $(( $(date +%s) - slurm_t0 )) s"
# tests/test_slurm.py fails, instead of skipping, if the cluster is not usable: CI must never pass by skipping
export MIMIQ_REQUIRE_SLURM=1
