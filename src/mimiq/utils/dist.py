"""Multi-process runs (DDP): one process per device, under torchrun, SLURM (srun / submitit) or submitit-local.

The world is read from the launcher's environment; the first match wins:

    torchrun, env://   RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
    SLURM step (srun)  SLURM_PROCID, SLURM_STEP_NUM_TASKS (srun sets it; a batch script without srun is one
                       process, whatever --ntasks says), SLURM_LOCALID; master = first host of the step's node
                       list, port derived from the job id (MASTER_ADDR / MASTER_PORT, when set, win)
    submitit local     SUBMITIT_LOCAL_GLOBALID, SUBMITIT_LOCAL_NTASKS, SUBMITIT_LOCAL_LOCALID on 127.0.0.1

A world of one (plain `python train.py`, a one-task SLURM job) starts no process group, and every helper here is
then a no-op that hands back its input, so a one-process run computes exactly what it did before DDP existed.

Backend: gloo without CUDA; `cpu:gloo,cuda:nccl` with CUDA (NCCL for CUDA tensors such as DDP's gradient
buckets, gloo for CPU ones, so `device=cpu` still works on a GPU node). Control traffic here (barriers, counts,
small objects) always goes through CPU tensors, hence gloo.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

TIMEOUT_ENV = "MIMIQ_DIST_TIMEOUT_MIN"  # collective timeout, minutes (a rank waits this long for the others)
DEFAULT_TIMEOUT_MIN = 120  # covers rank 0 training a mini teacher or writing a set's meta while others wait


@dataclass(frozen=True)
class World:
    """Where this process sits. `source` names the launcher environment it was read from ("single" if none)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={env[key]!r} is not an integer") from None


def _port_from_job(job_id: str) -> int:
    """The master port of a job: submitit's TorchDistributedEnvironment rule (fixed by the job id, 20000-60000)."""
    return random.Random(job_id).randint(20000, 60000)


def env_world(env: Mapping[str, str] | None = None) -> World:
    """The world described by `env` (default `os.environ`), without starting anything. SLURM and submitit-local
    variables are read through submitit's own job-environment maps and node-list parser (the ones its
    `TorchDistributedEnvironment` uses); that helper itself reads `os.environ` only and counts SLURM_NTASKS, so a
    batch script's own process would count as a world of --ntasks: here a SLURM world is the srun step's.

    Raises:
        ValueError: inconsistent variables (rank outside the world, a non-integer count).
    """
    from submitit.local.local import LocalJobEnvironment
    from submitit.slurm.slurm import SlurmJobEnvironment, _parse_node_list

    env = os.environ if env is None else env
    slurm, local_env = SlurmJobEnvironment._env, LocalJobEnvironment._env
    if "WORLD_SIZE" in env and "RANK" in env:
        rank, size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else rank
        addr, port = env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", "29500"))
        world = World(rank, size, local, addr, port, "torchrun")
    elif slurm["global_rank"] in env and "SLURM_STEP_NUM_TASKS" in env:
        rank, size = _int(env, slurm["global_rank"]), _int(env, "SLURM_STEP_NUM_TASKS")
        nodes = env.get("SLURM_STEP_NODELIST") or env.get(slurm["nodes"])
        addr = env.get("MASTER_ADDR") or (_parse_node_list(nodes)[0] if size > 1 and nodes else "127.0.0.1")
        port = int(env.get("MASTER_PORT") or _port_from_job(env.get(slurm["job_id"], "0")))
        world = World(rank, size, _int(env, slurm["local_rank"]), addr, port, "slurm")
    elif local_env["num_tasks"] in env and local_env["global_rank"] in env:
        rank, size = _int(env, local_env["global_rank"]), _int(env, local_env["num_tasks"])
        local = _int(env, local_env["local_rank"]) if local_env["local_rank"] in env else rank
        port = int(env.get("MASTER_PORT") or _port_from_job(env.get(local_env["job_id"], "0")))
        world = World(rank, size, local, env.get("MASTER_ADDR", "127.0.0.1"), port, "submitit-local")
    else:
        return World()
    if world.size < 1 or not 0 <= world.rank < world.size or world.local_rank < 0:
        raise ValueError(f"{world.source} environment: rank {world.rank} of world size {world.size} is impossible")
    return world


_WORLD = World()


def is_distributed() -> bool:
    """True inside a started process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return _WORLD.local_rank if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


def _cuda_index(local: int) -> int:
    """The CUDA device of local rank `local`: cuda:local, or cuda:0 when each process sees one GPU only."""
    count = torch.cuda.device_count()
    if local < count:
        return local
    if count == 1:  # SLURM --gpus-per-task / a per-process CUDA_VISIBLE_DEVICES
        return 0
    raise RuntimeError(f"local rank {local} has no GPU: {count} visible. Start one process per GPU")


def init_from_env(env: Mapping[str, str] | None = None) -> World:
    """Starts the process group described by the environment (idempotent); a world of one starts nothing.

    Returns:
        The world. The group is destroyed at exit (`destroy`), or earlier by calling `destroy()`.
    """
    global _WORLD
    if dist.is_available() and dist.is_initialized():  # started here before, or by the caller
        if (_WORLD.rank, _WORLD.size) != (dist.get_rank(), dist.get_world_size()):
            local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
            _WORLD = World(dist.get_rank(), dist.get_world_size(), local, source="caller")
        return _WORLD
    world = env_world(env)
    if world.size == 1:
        return world
    if not dist.is_available():
        raise RuntimeError(f"{world.source}: {world.size} processes, but this torch build has no torch.distributed")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(_cuda_index(world.local_rank))
        backend = "cpu:gloo,cuda:nccl"
    minutes = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_MIN))
    dist.init_process_group(
        backend,
        init_method=f"tcp://{world.master_addr}:{world.master_port}",
        rank=world.rank,
        world_size=world.size,
        timeout=timedelta(minutes=minutes),
    )
    _WORLD = world
    atexit.register(destroy)
    return world


def destroy() -> None:
    """Ends the process group, if one is running (safe to call twice)."""
    global _WORLD
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()


def quiet_logging() -> None:
    """On ranks > 0: the root logger keeps warnings and errors only and writes no log file (rank 0's file, e.g.
    Hydra's `train.log`, is the run's log). Nothing changes on rank 0 or in a world of one."""
    if is_main():
        return
    root = logging.getLogger()
    root.setLevel(max(root.getEffectiveLevel(), logging.WARNING))
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def rank_device(device: torch.device) -> torch.device:
    """This process's device: `device` itself in a world of one; with several processes, CUDA means this
    rank's GPU (cuda:LOCAL_RANK). An explicit `cuda:N` with several processes is refused: it would put every
    rank on one GPU."""
    if not is_distributed() or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(
            f"device={device} with {world_size()} processes: use device=cuda or device=auto, and each "
            "process takes cuda:LOCAL_RANK"
        )
    index = _cuda_index(local_rank())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def barrier() -> None:
    """Waits until every rank gets here (an all-reduce of a CPU tensor: gloo, whatever the device)."""
    if is_distributed():
        dist.all_reduce(torch.zeros(1))


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` (picklable) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=torch.device("cpu"))
    return box[0]


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of `values` over ranks, in float64 (exact for counts below 2^53)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_module_(module: torch.nn.Module, src: int = 0) -> None:
    """Copies rank `src`'s parameters and buffers into `module` on every rank, through `load_state_dict`, so
    modules that mirror buffers in Python attributes (the quantizers' `is_initialized` / `signed`) follow."""
    if not is_distributed():
        return
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    for k in sorted(state):
        dist.broadcast(state[k], src=src)
    module.load_state_dict(state)


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. trains and caches a teacher, builds a dataset cache); the others run it
    after, when what rank 0 wrote is there to be read. If rank 0 fails in the block, the others raise too
    instead of redoing its work."""
    if not is_distributed():
        yield
        return
    if is_main():
        ok = False
        try:
            yield
            ok = True
        finally:
            broadcast_object(ok)
    else:
        if not broadcast_object(None):
            raise RuntimeError("rank 0 failed in a step the other ranks wait for; its error is in its log")
        yield


class RankShard(Subset):
    """This rank's images of a dataset split across ranks: indices rank, rank + world, ... Evaluation over a
    RankShard sums its counts over ranks (`mimiq.evaluate.classification.evaluate`). Not a DistributedSampler:
    that one pads the last shard with repeated images (drop_last=False) or drops them (True), so summed counts
    would not be the eval split's."""


def shard_dataset(dataset: Dataset) -> Dataset:
    """`dataset` in a world of one; else this rank's RankShard (ranks hold disjoint shards covering it)."""
    if not is_distributed():
        return dataset
    return RankShard(dataset, list(range(rank(), len(dataset), world_size())))


def batch_part(n: int, r: int | None = None, world: int | None = None) -> slice:
    """Rank `r`'s contiguous part of a global batch of `n` items: sizes differ by at most one, earlier ranks
    take the extra ones (as `torch.tensor_split`); the parts, in rank order, are the batch."""
    r, world = rank() if r is None else r, world_size() if world is None else world
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def check_global_batch(n: int, qcfg, world: int) -> None:
    """Fails fast unless every rank gets images of every global batch of QAT (n images, `qcfg` the `qat` group):
    `qat.batch_size` divisible by the world size, and (without drop_last) a last partial batch of at least one
    image per rank."""
    if world == 1:
        return
    if qcfg.batch_size % world:
        raise ValueError(
            f"qat.batch_size={qcfg.batch_size} is the global batch of all {world} processes and must be "
            f"divisible by {world} (per-process batch = batch_size / {world})"
        )
    last = n % qcfg.batch_size
    if not qcfg.drop_last and 0 < last < world:
        raise ValueError(
            f"the last batch of the epoch has {last} image(s) ({n} images, qat.batch_size="
            f"{qcfg.batch_size}), fewer than the {world} processes: set qat.drop_last=true"
        )
