"""SLURM end to end on a real cluster (CI: `scripts/slurm_local.sh up`: one node, 2 CPUs, no GPUs).

* a two-job bits sweep through `hydra/launcher=slurm`, both `metrics.json` checked;
* a job that hits its real SLURM time limit once, is requeued by submitit and resumes QAT from `ckpt_last.pt`
  in its config-derived run dir, ending with the metrics of an uninterrupted run;
* requests the cluster can never satisfy fail at submit time, and a failing job's error reaches the user.

Skipped, with the reason, when `sbatch` is not on PATH or no cluster answers. CI sets MIMIQ_REQUIRE_SLURM=1,
which turns that skip into a failure: these tests must never pass in CI by not running.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# What the single-node CI cluster can run: no GRES (gpus_per_node must be null), 2 CPUs (one per job, so a
# 2-job sweep runs in parallel), ~24 GB. One BLAS thread per job keeps the shared CPUs usable.
CI_LAUNCHER = {
    "hydra/launcher": "slurm",
    "hydra.launcher.gpus_per_node": "null",
    "hydra.launcher.cpus_per_task": "1",
    "hydra.launcher.mem_gb": "2",
    "hydra.launcher.timeout_min": "15",
    "hydra.launcher.setup": '["export OMP_NUM_THREADS=1"]',
}
ACTIVE_STATES = {"PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING", "SUSPENDED", "RESIZING"}
# Keys that describe how a run went rather than its results (cache provenance, resume point); wall times are
# excluded by name (any key containing "time").
RUN_ONLY_KEYS = {"qat_resumed_from_epoch", "synth_reused", "teacher_source", "git_sha"}


def results_only(d: dict) -> dict:
    return {k: v for k, v in d.items() if "time" not in k and k not in RUN_ONLY_KEYS}


# Loaded by every Python process of the requeue test's job (PYTHONPATH is set by a launcher `setup` line):
# the first time QAT writes `ckpt_last.pt` in a run dir, the process stalls, standing in for a job far longer
# than its time limit. SLURM then really times it out (USR2 before the limit), submitit checkpoints and
# requeues it, and the next attempt, which does not stall, must resume from that checkpoint. Keyed on the
# documented checkpoint name only (the atomic write's rename), not on any pipeline internals.
STALL_HOOK = """
import os
import sys
import time

_replace = os.replace


def _replace_then_stall_once(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    dst = os.fsdecode(dst)
    if os.path.basename(dst) == "ckpt_last.pt":
        marker = os.path.join(os.path.dirname(dst), "requeue_test_stalled")
        if not os.path.exists(marker):
            open(marker, "w").close()
            print(f"[requeue test] stalling after writing {dst} until SLURM times the job out",
                  file=sys.stderr, flush=True)
            time.sleep(900)


os.replace = _replace_then_stall_once
"""


def _cmd(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here, or None when a usable cluster answers."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (start a local cluster: sudo scripts/slurm_local.sh up)"
    try:
        ping = _cmd("scontrol", "ping")
        if "is UP" not in ping.stdout:
            return f"no SLURM controller answers `scontrol ping`: {(ping.stdout + ping.stderr).strip()}"
        states = _cmd("sinfo", "-h", "-o", "%t").stdout.split()
        if not any(s.rstrip("*~#!%$@^-") in ("idle", "mix", "alloc") for s in states):
            return f"no SLURM node is idle/mix/alloc (sinfo states: {states})"
        # Without accounting submitit never learns that a cancelled job died, and the sweep hangs.
        sacct = _cmd("sacct", "-n", "-X", "-S", "now")
        if sacct.returncode != 0:
            return f"SLURM accounting (sacct) does not work: {sacct.stderr.strip()}"
    except subprocess.TimeoutExpired as e:
        return f"SLURM command timed out: {e.cmd}"
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    problem = cluster_problem()
    if problem is None:
        return
    if os.environ.get("MIMIQ_REQUIRE_SLURM") == "1":
        pytest.fail(f"MIMIQ_REQUIRE_SLURM=1 but the SLURM cluster is not usable: {problem}")
    pytest.skip(problem)


def overrides(launcher: dict[str, str], *extra: str) -> list[str]:
    return [f"{k}={v}" for k, v in launcher.items()] + list(extra)


def job_ids(sweep: Path) -> list[str]:
    """SLURM job ids of a sweep, from submitit's folders: `<id>` for a single job; for an array, `<id>` holds
    only the batch script and each task has its own `<id>_<task>`."""
    folder = sweep / ".submitit"
    names = [p.name for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    tasks = sorted(n for n in names if re.fullmatch(r"\d+_\d+", n))
    return tasks or sorted(n for n in names if n.isdigit())


def job_logs(sweep: Path, lines: int = 40) -> str:
    """The tail of every submitit log of a sweep, for assertion messages."""
    out = []
    for log in sorted((sweep / ".submitit").glob("*/*_log.*")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.relative_to(sweep)} ---\n" + "\n".join(tail))
    return "\n".join(out) or "(no submitit logs)"


def run_sweep(args: list[str], sweep: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python train.py -m ARGS`, which blocks until every job ends; cancels the sweep's jobs if it hangs."""
    try:
        cmd = [sys.executable, "train.py", "-m", *args]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except BaseException:  # timeout or ^C: leave no job behind on the cluster
        ids = {i.split("_")[0] for i in job_ids(sweep)}
        if ids:
            _cmd("scancel", *ids)
        raise


def sacct_states(job: str, settle_s: float = 60) -> list[str]:
    """Every recorded state of a job, requeued attempts included (`sacct -D`). submitit returns as soon as the
    result file exists, while SLURM may still be finishing the job: wait until its last state is final."""
    deadline = time.time() + settle_s
    while True:
        out = _cmd("sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "JobID,State").stdout
        states = [line.split("|")[1] for line in out.splitlines() if line]
        if (states and states[-1] not in ACTIVE_STATES) or time.time() > deadline:
            return states
        time.sleep(1)


def test_bits_sweep_on_slurm(slurm, tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    t0 = time.time()
    run_cfg = ["debug=tiny", "bits=w4a4,w8a8", f"paths.cache_dir={cache_dir}"]
    args = overrides(CI_LAUNCHER, *run_cfg, f"hydra.sweep.dir={sweep}")
    proc = run_sweep(args, sweep, timeout=900)
    wall = time.time() - t0
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n{job_logs(sweep)}"

    runs = {}
    for path in sorted(sweep.glob("*/metrics.json")):
        m = json.loads(path.read_text())
        assert {"w_bits", "a_bits", "top1"} <= m.keys(), f"{path}: {sorted(m)}"
        assert 0.0 <= m["top1"] <= 100.0
        # the run dir is derived from the job's config (num + override_dirname), so a requeue finds it again
        assert f"bits=w{m['w_bits']}a{m['a_bits']}" in path.parent.name
        runs[(m["w_bits"], m["a_bits"])] = m
    assert set(runs) == {(4, 4), (8, 8)}, f"metrics found: {sorted(runs)}\n{job_logs(sweep)}"

    # both jobs really went through SLURM (one array job, two tasks) and finished there
    ids = job_ids(sweep)
    assert len(ids) == 2, ids
    for job in ids:
        assert sacct_states(job)[-1:] == ["COMPLETED"], (job, sacct_states(job))
    top1 = {f"W{w}A{a}": round(m["top1"], 2) for (w, a), m in runs.items()}
    print(f"2-job bits sweep on SLURM: {wall:.0f} s, top-1 {top1}")


def test_timeout_requeue_resumes_from_checkpoint(slurm, tmp_path, cache_dir):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL_HOOK)
    sweep, ref_dir = tmp_path / "sweep", tmp_path / "reference"
    run_cfg = ["debug=tiny", "bits=w4a4", f"paths.cache_dir={cache_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count as the SLURM job: same float sums

    # The uninterrupted reference: the same config as a plain local run, in parallel with the SLURM job (which
    # spends most of its time stalled).
    with open(tmp_path / "reference.log", "w") as ref_log:
        cmd = [sys.executable, "train.py", *run_cfg, f"hydra.run.dir={ref_dir}"]
        ref = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=ref_log, stderr=subprocess.STDOUT)
        # Real time limit: 2 min. SLURM checks limits every 30 s and sends USR2 once the time left is at most
        # signal_delay_s + 30 s, so the signal lands 70-100 s into an attempt: late enough for the first QAT
        # epoch to be checkpointed (else the next attempt stalls instead), early enough to keep the test
        # short. max_num_timeout=3 leaves room for one more timeout on a badly overloaded machine.
        launcher = {
            **CI_LAUNCHER,
            "hydra.launcher.timeout_min": "2",
            "hydra.launcher.signal_delay_s": "20",
            "hydra.launcher.max_num_timeout": "3",
            "hydra.launcher.setup": f'["export PYTHONPATH={hook}","export OMP_NUM_THREADS=1"]',
        }
        t0 = time.time()
        proc = run_sweep(overrides(launcher, *run_cfg, f"hydra.sweep.dir={sweep}"), sweep, timeout=480)
        wall = time.time() - t0
        try:
            ref.wait(timeout=300)
        finally:
            ref.kill()
    assert proc.returncode == 0, f"{proc.stderr[-4000:]}\n{job_logs(sweep)}"
    assert ref.returncode == 0, (tmp_path / "reference.log").read_text()[-4000:]

    run_dirs = [p.parent for p in sweep.glob("*/metrics.json")]
    assert len(run_dirs) == 1, f"expected one run dir with metrics.json: {run_dirs}\n{job_logs(sweep)}"
    run_dir = run_dirs[0]
    assert (run_dir / "requeue_test_stalled").exists(), "the stall hook never ran: no ckpt_last.pt written?"
    job = job_ids(sweep)[0]
    states = sacct_states(job)
    assert "REQUEUED" in states and states[-1] == "COMPLETED", (states, job_logs(sweep))
    log = (sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
    assert "this job is timed-out" in log and "Requeued job" in log, job_logs(sweep)

    got = json.loads((run_dir / "metrics.json").read_text())
    want = json.loads((ref_dir / "metrics.json").read_text())
    assert want["qat_resumed_from_epoch"] is None, "the reference run must be uninterrupted"
    assert got["qat_resumed_from_epoch"] is not None and got["qat_resumed_from_epoch"] >= 1, (
        f"the requeued job restarted QAT instead of resuming it: {got['qat_resumed_from_epoch']}"
    )
    # Same run, same numbers: resuming re-seeds per epoch and restores model/optimizer/scheduler/RNG state,
    # and both processes use one thread, so the results must agree exactly (timings and provenance excepted).
    assert results_only(got) == results_only(want)
    hist_got = json.loads((run_dir / "qat_history.json").read_text())
    hist_want = json.loads((ref_dir / "qat_history.json").read_text())
    assert [results_only(r) for r in hist_got] == [results_only(r) for r in hist_want]
    resumed = got["qat_resumed_from_epoch"]
    print(f"requeue test: {wall:.0f} s on SLURM, states {states}, resumed from epoch {resumed}")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("hydra.launcher.mem_gb=100000", "Memory specification can not be satisfied"),
        ("hydra.launcher.gpus_per_node=8", "Invalid generic resource"),
        ("hydra.launcher.cpus_per_task=4096", "More processors requested than permitted"),
    ],
    ids=["memory", "gpus", "cpus"],
)
def test_impossible_request_fails_at_submit(slurm, tmp_path, override, message):
    key, value = override.split("=", 1)
    sweep = tmp_path / "sweep"
    t0 = time.time()
    args = overrides({**CI_LAUNCHER, key: value}, "debug=tiny", f"hydra.sweep.dir={sweep}")
    proc = run_sweep(args, sweep, timeout=120)
    wall = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "sbatch: error" in out and message in out, out[-3000:]
    assert not job_ids(sweep), "a job was queued although sbatch refused the request"
    assert wall < 60, f"the rejection took {wall:.0f} s: it must come at submit time, not after queueing"


def test_failed_job_error_reaches_the_user(slurm, tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    # invalid for the pipeline (validated before any compute), but only once the job composes its config
    run_cfg = ["debug=tiny", "qat.epochs=0", f"paths.cache_dir={cache_dir}"]
    args = overrides(CI_LAUNCHER, *run_cfg, f"hydra.sweep.dir={sweep}")
    proc = run_sweep(args, sweep, timeout=300)
    assert proc.returncode != 0
    assert "qat.epochs" in proc.stderr, f"{proc.stderr[-3000:]}\n{job_logs(sweep)}"
    assert len(job_ids(sweep)) == 1, "the job was submitted, ran and failed inside SLURM"
