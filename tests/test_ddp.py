"""DDP on CPU with gloo: the world size changes how work is split, never what is computed.

* generation: 2 processes write exactly (torch.equal) the images and labels of 1 process, for mimiq and for
  psaq_v2 (the teacher-student loop), and every rank ends up holding the whole set;
* QAT: the whole pipeline (pipeline.run) in 2 processes ends with the metrics of 1 process with the same global
  batch; a run interrupted after epoch 1 resumes under DDP to the uninterrupted 2-process result;
* `torchrun --nproc_per_node=2 train.py debug=tiny` (slow): one run dir, written by rank 0 only, with the metrics
  of `python train.py debug=tiny`;
* the launcher environments (torchrun, srun, submitit-local) and the checks that fail fast.

Processes are started with torch.multiprocessing (spawn) and a free TCP port; each uses one thread, as the
1-process reference does, so both sides run the same kernels. The process tests are `slow` (about a minute on
2 busy cores, mostly two interpreters importing torch/timm/hydra); the environment and check tests are fast.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import ROOT, compose_cfg

from mimiq.utils import dist
from mimiq.utils.dist import World, batch_part, check_global_batch, env_world

# QAT, 2 processes vs 1 with the same global batch of 8. The images, their augmentation, the batch composition,
# the quantizer init and the order of updates are identical. What differs is the float summation order: each
# rank's loss is a mean over its 4 images and DDP averages the two ranks' gradients, where one process takes a
# single mean over 8. That is a few ulp per gradient value, and where a 4-bit fake-quantized value sits at a rounding
# boundary one ulp can flip it by a whole step, which moves that step's gradients by more. Measured after the 4 SGD
# steps (lr 0.01): weights differ by <= 4e-9 on an Intel AVX512 CPU and by <= 4.5e-7 on an AMD EPYC without AVX512
# (other kernels, other summation orders), the epoch losses by <= 5e-7 on both (HSAD is 1 - mean SSIM, rounded at
# the scale of 1.0, ulp 6e-8). The bounds are 4-20x the larger; a DDP fault (gradients not averaged, a rank skipping
# a step) moves weights on the scale of the lr. Top-1 is a count over the eval set and must be equal. If one ulp ever
# flipped an argmax here, the test would fail and say so.
LOSS_ATOL = 1e-5
WEIGHT_ATOL = 2e-6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, job: str, args: tuple, out: Path) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
    )
    torch.set_num_threads(1)
    assert dist.init_from_env().size == world
    try:
        torch.save(JOBS[job](*args), out / f"{job}_w{world}_r{rank}.pt")
    finally:
        dist.destroy()


def spawn(world: int, job: str, *args, out: Path) -> list:
    """Runs JOBS[job](*args) in `world` processes; returns each rank's result."""
    mp.spawn(_worker, args=(world, free_port(), job, args, out), nprocs=world, join=True)
    return [torch.load(out / f"{job}_w{world}_r{r}.pt", weights_only=False) for r in range(world)]


def _tiny(cache: Path, *overrides: str):
    return compose_cfg(["debug=tiny", f"paths.cache_dir={cache}", *overrides])


def _generate(cache: Path, generators: tuple[str, ...]) -> dict:
    from mimiq.models.teacher import load_or_train_teacher
    from mimiq.synth.generate import synthesize_or_load

    result = {}
    for name in generators:  # 6 images in shards of 2: 3 shards, dealt 2 + 1 over two ranks
        cfg = _tiny(
            cache,
            "model.train_teacher=false",
            f"generator={name}",
            "generator.num_images=6",
            "generator.batch_size=2",
            "generator.iterations=4",
        )
        torch.manual_seed(0)
        teacher = load_or_train_teacher(cfg, torch.device("cpu"))[0]
        s = synthesize_or_load(teacher, cfg, torch.device("cpu"))
        result[name] = (s.images, s.labels, s.meta["interhead_ssim"], s.meta["reused"])
    return result


def _pipeline(cache: Path, out_dir: Path, interrupt_after: int | None = None) -> dict:
    """pipeline.run on the debug config (its 1-epoch teacher trained by rank 0 and cached); with
    `interrupt_after=k`, QAT dies (on every rank) in the evaluation of epoch k + 1, after rank 0 checkpointed
    epoch k, and the run is restarted in the same run dir."""
    from mimiq import pipeline
    from mimiq.task.classification import Classification

    cfg = _tiny(
        cache,
        "generator.num_images=16",
        "generator.iterations=2",
        "qat.epochs=2",
        "qat.batch_size=8",
        "optim.lr=0.01",
        "qat.augment.synthetic=true",  # augmented, so that its draws are part of the comparison
    )
    if interrupt_after is not None:
        real_evaluator, calls = Classification.qat_evaluator, []

        def dying_evaluator(self, stage, device):
            evaluate = real_evaluator(self, stage, device)

            def dying_evaluate(student):
                calls.append(1)
                if len(calls) > interrupt_after:
                    raise KeyboardInterrupt("killed")
                return evaluate(student)

            return dying_evaluate

        Classification.qat_evaluator = dying_evaluator
        try:
            with pytest.raises(KeyboardInterrupt):
                pipeline.run(cfg, out_dir)
        finally:
            Classification.qat_evaluator = real_evaluator
        assert (out_dir / "ckpt_last.pt").is_file() and not (out_dir / "metrics.json").exists()
    metrics = pipeline.run(cfg, out_dir)
    main = dist.is_main()
    return {
        "metrics": metrics,
        "files": sorted(p.name for p in out_dir.iterdir()),
        "student": torch.load(out_dir / "student.pt", weights_only=True)["student"] if main else None,
        "history": json.loads((out_dir / "qat_history.json").read_text()) if main else None,
    }


def _all(tmp: Path) -> dict:
    """Everything one world runs (few process starts keep the test short): generation into its own cache,
    then the pipeline twice, uninterrupted and (2 processes) interrupted + resumed."""
    world = dist.world_size()
    out = {"generate": _generate(tmp / f"gen{world}", ("mimiq", "psaq_v2"))}
    out["pipeline"] = _pipeline(tmp / f"cache{world}", tmp / f"run{world}")
    if world > 1:
        out["resumed"] = _pipeline(tmp / f"cache{world}", tmp / f"run{world}_resumed", interrupt_after=1)
    return out


JOBS = {"all": _all}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """{1: [the 1-process results], 2: [rank 0's, rank 1's]}. The 1-process reference runs here, in this
    process (one process start less), on one thread like each spawned rank, so both run the same kernels."""
    tmp = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = _all(tmp)
    finally:
        torch.set_num_threads(threads)
    return {1: [one], 2: spawn(2, "all", tmp, out=tmp), "tmp": tmp}


# ------------------------------------------------------------------------------------------------ processes


@pytest.mark.slow
def test_generation_is_the_same_for_any_world_size(runs):
    one, two, tmp = runs[1][0]["generate"], [r["generate"] for r in runs[2]], runs["tmp"]
    for name in ("mimiq", "psaq_v2"):
        images, labels, ssim, reused = one[name]
        assert images.shape == (6, 3, 32, 32) and not reused
        for rank in (0, 1):  # each rank holds the whole set, identical to the 1-process one
            r_images, r_labels, r_ssim, r_reused = two[rank][name]
            assert torch.equal(r_images, images), (name, rank)
            assert torch.equal(r_labels, labels) and r_ssim == ssim and not r_reused, (name, rank)
    # the same shard files, bit for bit, from 1 and from 2 processes (the cache key has no world size in it)
    shards1, shards2 = (sorted((tmp / f"gen{w}" / "synth").glob("*/shard_*.pt")) for w in (1, 2))
    assert [p.name for p in shards2 if p.parent.name.startswith("mimiq")] == [f"shard_0000{i}.pt" for i in range(3)]
    assert [(p.parent.name, p.name) for p in shards1] == [(p.parent.name, p.name) for p in shards2]
    for a, b in zip(shards1, shards2, strict=True):
        assert torch.equal(torch.load(a)["images"], torch.load(b)["images"]), b


@pytest.mark.slow
def test_qat_in_two_processes_matches_one_process(runs):
    one, two = runs[1][0]["pipeline"], [r["pipeline"] for r in runs[2]]
    m1, m2 = one["metrics"], two[0]["metrics"]
    assert m1["world_size"] == 1 and m2["world_size"] == 2 and m2["teacher_source"] == "trained"
    assert m1["fp_top1"] > 20  # a trained teacher, so that top-1 can tell students apart
    assert two[1]["metrics"]["top1"] == m2["top1"]  # every rank returns the all-reduced accuracy
    assert m2["fp_top1"] == m1["fp_top1"]  # the split FP evaluation counts every image once
    assert m2["interhead_ssim"] == m1["interhead_ssim"]
    assert m2["top1"] == m1["top1"] and m2["top1_best"] == m1["top1_best"]
    for h1, h2 in zip(one["history"], two[0]["history"], strict=True):
        assert h2["top1"] == h1["top1"]
        for k in h1:
            if k.startswith("loss_"):
                assert h2[k] == pytest.approx(h1[k], rel=0, abs=LOSS_ATOL), k
    for k, v in one["student"].items():
        assert torch.allclose(two[0]["student"][k], v, rtol=0, atol=WEIGHT_ATOL), k
    assert one["files"] == two[0]["files"]  # rank 0 writes everything a 1-process run writes
    assert {"metrics.json", "student.pt", "ckpt_last.pt", "manifest.txt"} <= set(two[0]["files"])


@pytest.mark.slow
def test_qat_resumes_under_ddp(runs):
    """Killed during epoch 2 under DDP and restarted: resumes from rank 0's epoch-1 checkpoint, and ends
    exactly (gloo's reductions are deterministic) where the uninterrupted 2-process run ended."""
    full, resumed = runs[2][0]["pipeline"], runs[2][0]["resumed"]
    assert resumed["metrics"]["qat_resumed_from_epoch"] == 1 and full["metrics"]["qat_resumed_from_epoch"] is None
    assert resumed["history"] == full["history"]
    for k, v in full["student"].items():
        assert torch.equal(resumed["student"][k], v), k


@pytest.mark.slow
def test_train_py_under_torchrun_matches_python(tmp_path):
    args = ["debug=tiny", "generator.iterations=2", "qat.epochs=2"]  # each run has its own cache: it all runs
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop(dist.TIMEOUT_ENV, None)
    single = subprocess.run(
        [
            sys.executable,
            "train.py",
            *args,
            f"paths.cache_dir={tmp_path / 'cache1'}",
            f"hydra.run.dir={tmp_path / 'one'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}"]
    logs = tmp_path / "logs"  # the default time-stamped run dir, shared through rank 0's stamp
    multi = subprocess.run(
        [*torchrun, "train.py", *args, f"paths.cache_dir={tmp_path / 'cache2'}", f"paths.log_dir={logs}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    run_dirs = list((logs / "mimiq" / "runs").iterdir())
    assert len(run_dirs) == 1, run_dirs
    run = run_dirs[0]
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "metrics.json").is_file()
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((run / "metrics.json").read_text())
    assert (m1["world_size"], m2["world_size"]) == (1, 2) and m2["teacher_source"] == "trained"
    assert not m2["synth_reused"]  # generated by the two ranks
    assert m2["fp_top1"] == m1["fp_top1"] and m2["interhead_ssim"] == m1["interhead_ssim"]
    assert m2["top1"] == m1["top1"]
    assert multi.stdout.count("FP top-1") == 1  # rank 1 prints nothing
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


# --------------------------------------------------------------------------------------- environments, checks


def test_world_from_launcher_environments():
    assert env_world({}) == World()
    tr = env_world({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (tr.rank, tr.size, tr.local_rank, tr.master_addr, tr.master_port, tr.source) == (
        3,
        8,
        3,
        "n1",
        1234,
        "torchrun",
    )
    srun = {
        "SLURM_PROCID": "5",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "gpu[07-10]",
        "SLURM_JOB_ID": "4242",
    }
    w = env_world(srun)
    assert (w.rank, w.size, w.local_rank, w.source) == (5, 8, 1, "slurm") and w.master_addr == "gpu07"
    assert w.master_port == env_world(srun).master_port and 20000 <= w.master_port < 60000  # same for every rank
    pinned = env_world({**srun, "MASTER_ADDR": "h", "MASTER_PORT": "999"})
    assert (pinned.master_addr, pinned.master_port) == ("h", 999)
    # a batch script's own process (no srun step) is one process, whatever --ntasks says
    assert env_world({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0"}).size == 1
    local = env_world(
        {
            "SUBMITIT_LOCAL_NTASKS": "2",
            "SUBMITIT_LOCAL_GLOBALID": "1",
            "SUBMITIT_LOCAL_LOCALID": "1",
            "SUBMITIT_LOCAL_JOB_ID": "77",
        }
    )
    assert (local.rank, local.size, local.source) == (1, 2, "submitit-local")
    with pytest.raises(ValueError, match="rank 4 of world size 2"):
        env_world({"RANK": "4", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        env_world({"RANK": "0", "WORLD_SIZE": "two"})


def test_batch_parts_tile_the_global_batch():
    for n, world in ((8, 2), (16, 8), (7, 2), (5, 3), (1, 1)):
        parts = [batch_part(n, r, world) for r in range(world)]
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:], strict=False))
        assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_global_batch_must_split_over_the_processes():
    qcfg = compose_cfg(["debug=tiny"]).qat  # batch 8, drop_last
    check_global_batch(16, qcfg, 1)
    check_global_batch(16, qcfg, 4)
    with pytest.raises(ValueError, match="qat.batch_size=8 is the global batch of all 3 processes"):
        check_global_batch(16, qcfg, 3)
    qcfg.drop_last = False
    check_global_batch(19, qcfg, 2)  # last batch of 3 images: 2 + 1
    with pytest.raises(ValueError, match="last batch of the epoch has 1 image"):
        check_global_batch(17, qcfg, 2)


def test_single_process_helpers_are_identities():
    assert not dist.is_distributed() and dist.world_size() == 1 and dist.is_main()
    assert dist.broadcast_object({"a": 1}) == {"a": 1} and dist.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    data = list(range(5))
    assert dist.shard_dataset(data) is data
    assert dist.rank_device(torch.device("cpu")) == torch.device("cpu")
