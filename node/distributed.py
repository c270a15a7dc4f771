"""`crossback node --nproc N`: one node trained by N processes (or GPUs) with torch.distributed.

torchrun-compatible: a rank reads RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, so
``torchrun --nproc-per-node N -m crossback.app.cli node ...`` works as well as ``--nproc N``, which
starts the N ranks itself on loopback. Rank 0 is the node the swarm sees: it serves gRPC, gossips,
selects and borrows. The other ranks only train, and receive the learner from rank 0 after every
task's transfer step. The process group is this node's alone: swarm nodes never share one, so one
failing node cannot stall another.

The learner crosses ranks as tensors only (a JSON header as a uint8 tensor, then one uint8 buffer
with every tensor's bytes), never through torch.distributed's pickling object collectives.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from typing import Mapping

import torch

from crossback.config.errors import ConfigError
from crossback.models.learner import ContinualLearner
from crossback.models.parallel import DataParallel
from crossback.models.serialise import learner_from_tensors, learner_metadata, shared_tensors, task_tensors

# A rank waits on rank 0 while it selects, borrows and adapts (minutes); a dead rank is the launcher's
# (or torchrun's) to notice, so the collective timeout only has to outlast a long transfer step.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)
STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Rank:
    rank: int
    world: int
    local_rank: int

    @property
    def serves(self) -> bool:
        return self.rank == 0


def rank_from_env(env: Mapping[str, str]) -> Rank | None:
    """This process's place in a torchrun-style launch; None when it was started alone."""
    if "WORLD_SIZE" not in env and "RANK" not in env:
        return None
    try:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers, got {env.get('RANK')!r} / "
                          f"{env.get('WORLD_SIZE')!r} / {env.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local}: not a valid place in a launch")
    return None if world == 1 else Rank(rank, world, local)


def rank_device(device: torch.device, rank: Rank) -> torch.device:
    """Each rank on a GPU node trains on its own GPU (cuda:LOCAL_RANK); on CPU they share the CPU."""
    if device.type == "cuda":
        if rank.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {rank.local_rank} has no GPU: {torch.cuda.device_count()} visible")
        return torch.device("cuda", rank.local_rank)
    return device


def join_group(rank: Rank, device: torch.device) -> DataParallel:
    """NCCL between GPUs, gloo on CPU; the rendezvous is torchrun's MASTER_ADDR:MASTER_PORT."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=rank.rank, world_size=rank.world, timeout=COLLECTIVE_TIMEOUT)
    return DataParallel(rank.rank, rank.world, device if backend == "nccl" else torch.device("cpu"))


def leave_group(parallel: DataParallel | None = None) -> None:
    """``parallel``: leave together — every rank waits here for the others first. A rank that tears its
    group down while another still holds connections to it can abort in gloo's threads."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if parallel is not None:
        dist.barrier(group=parallel.group)
    dist.destroy_process_group()


# ---------------------------------------------------------------- the learner across ranks

def _tensors(learner: ContinualLearner) -> dict[str, torch.Tensor]:
    out = {f"shared/{n}": t for n, t in shared_tensors(learner).items()}
    for i in range(len(learner.tasks)):
        out |= {f"task/{i}/{n}": t for n, t in task_tensors(learner, i).items()}
    return out


def _pack(learner: ContinualLearner) -> tuple[bytes, bytes]:
    tensors, entries, chunks, offset = _tensors(learner), [], [], 0
    for name, t in tensors.items():
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        entries.append({"name": name, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                        "offset": offset, "bytes": int(raw.numel())})
        chunks.append(raw)
        offset += int(raw.numel())
    body = torch.cat(chunks).numpy().tobytes() if chunks else b""
    header = {"meta": learner_metadata(learner), "tensors": entries, "crc32": zlib.crc32(body)}
    return json.dumps(header, sort_keys=True).encode(), body


def learner_digest(learner: ContinualLearner) -> bytes:
    """16 bytes that differ when any tensor or task record of the learner differs."""
    header, body = _pack(learner)
    return hashlib.blake2b(header + body, digest_size=16).digest()


def _unpack(header: bytes, body: bytes) -> ContinualLearner:
    head = json.loads(header)
    if zlib.crc32(body) != head["crc32"]:
        raise RuntimeError("the learner broadcast from rank 0 arrived corrupted (crc32 mismatch)")
    buf = torch.frombuffer(bytearray(body), dtype=torch.uint8) if body else torch.empty(0, dtype=torch.uint8)
    shared, per_task = {}, [{} for _ in head["meta"]["tasks"]]
    for e in head["tensors"]:
        dtype = getattr(torch, e["dtype"])
        raw = buf[e["offset"] : e["offset"] + e["bytes"]]
        t = (raw.view(dtype) if e["bytes"] else torch.empty(0, dtype=dtype)).reshape(e["shape"]).clone()
        kind, _, rest = e["name"].partition("/")
        if kind == "shared":
            shared[rest] = t
        else:
            task, _, name = rest.partition("/")
            per_task[int(task)][name] = t
    return learner_from_tensors(head["meta"], shared, per_task)


def _broadcast_bytes(parallel: DataParallel, data: bytes | None) -> bytes:
    size = parallel.broadcast(torch.tensor([len(data) if data is not None else 0], dtype=torch.int64))
    n = int(size.item())
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(n, dtype=torch.uint8)
    return parallel.broadcast(buf).numpy().tobytes() if n else b""


def broadcast_learner(parallel: DataParallel, learner: ContinualLearner | None, device: torch.device) -> ContinualLearner:
    """Rank 0's learner on every rank (rank 0 passes its own and gets it back unchanged)."""
    if parallel.rank == 0:
        header, body = _pack(learner)
        _broadcast_bytes(parallel, header)
        _broadcast_bytes(parallel, body)
        return learner
    header, body = _broadcast_bytes(parallel, None), _broadcast_bytes(parallel, None)
    return _unpack(header, body).to(device)


def ranks_agree(parallel: DataParallel, learner: ContinualLearner) -> bool:
    """Whether every rank holds the same learner (every rank calls this at the same point)."""
    mine = torch.frombuffer(bytearray(learner_digest(learner)), dtype=torch.uint8)
    return all(bool(torch.equal(d, mine)) for d in parallel.all_gather(mine))


# ---------------------------------------------------------------- the launcher behind --nproc

def launch(nproc: int, command: list[str], threads: int = 0) -> int:
    """Run ``command`` (the node's own command line, e.g. ``python -m crossback.app.cli node ...``) as
    ``nproc`` ranks on this machine and wait for them. A rank that fails
    stops the others (as torchrun does); SIGTERM / SIGINT are passed on to every rank. ``threads``: torch
    threads per rank (0: the cores split evenly between ranks, so N ranks do not oversubscribe them)."""
    from torch.distributed import TCPStore

    # The launcher hosts the rendezvous store, as torchrun's agent does: bound to port 0 here and held,
    # so no other process can take the port between choosing it and rank 0 binding it.
    store = TCPStore("127.0.0.1", 0, nproc + 1, is_master=True, timeout=COLLECTIVE_TIMEOUT, wait_for_workers=False)
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(store.port), WORLD_SIZE=str(nproc),
               LOCAL_WORLD_SIZE=str(nproc), TORCHELASTIC_USE_AGENT_STORE="True")
    if not threads and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    children = [subprocess.Popen(command,
                                 env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in range(nproc)]

    def forward(signum, _frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        while True:
            codes = [c.poll() for c in children]
            failed = next((r for r, code in enumerate(codes) if code not in (None, 0)), None)
            if failed is not None:
                code = codes[failed]
                print(f"crossback node: rank {failed} of {nproc} exited with {code}; stopping the others",
                      file=sys.stderr)
                return code if code > 0 else 128 - code  # killed by signal N: 128 + N
            if all(code is not None for code in codes):
                return 0
            time.sleep(0.2)
    finally:  # the others stop here, while the store they rendezvoused on is still held
        for s, handler in previous.items():
            signal.signal(s, handler)
        _stop_all(children)
        del store


def _stop_all(children: list[subprocess.Popen]) -> None:
    for c in children:
        if c.poll() is None:
            c.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for c in children:
        try:
            c.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.kill()
            c.wait()
