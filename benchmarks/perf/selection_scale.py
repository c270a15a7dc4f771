"""One selection against a large swarm view, in one process: is its cost O(selection.max_candidates)?

    python benchmarks/perf/selection_scale.py --peers 256,1024 --json out.json

Published snapshots of a few donors (digits, one swarm genesis; half learned 0-2, half 3-5, plus an
untrained one) are served by real in-process gRPC servers; the receiver's view lists ``--peers`` peer
ids, each an alias of one of those servers (a thousand servers do not fit two cores; the selection
cannot tell: it dials, probes and fetches per peer id). For each view size and each M in
``--max-candidates`` (0: every peer) the receiver runs ``orchestrator_free.shortlist.select`` with
``kv_motion`` + a shortlist of 2, several times, and the median seconds, bytes and peers probed are
reported. No training is timed: the receiver learns its task once, before.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from crossback.bench.peers import published, serve_snapshots, untrained_learner
from crossback.data.sources import load_catalog
from crossback.config.data import SplitSpec, TaskSpec
from crossback.data.tasks import build_task
from crossback.config.data import View
from crossback.models.learner import ContinualLearner
from crossback.config.model import MethodConfig
from crossback.models.methods import learn_task
from crossback.config.model import ImageAdapterConfig
from crossback.config.model import PerceiverConfig
from crossback.config.model import TrainOptions
from crossback.orchestrator_free.candidates import ProbeHistory
from crossback.config.selection import ProbeSpec
from crossback.orchestrator_free.genesis import genesis_id
from crossback.config.selection import SelectionConfig
from crossback.orchestrator_free.selection import PeerAccess, TaskAtHand
from crossback.orchestrator_free.shortlist import select
from crossback.node.transport import CallPolicy, ClientPool, PeerClient
from crossback.config.transfer import TransferConfig
from crossback.transfer.registry import make_strategy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from masked_step import cpu_name  # noqa: E402

GENESIS = 0
MODEL = PerceiverConfig(token_dim=32, num_latents=8, latent_dim=32, depth=1, cross_dim_head=16, latent_heads=2,
                        latent_dim_head=16, queries_dim=32, image=ImageAdapterConfig(channels=1, patch_size=2))
TASKS = (TaskSpec("a", classes=("0", "1", "2")), TaskSpec("b", classes=("3", "4", "5")))


def _task(spec: TaskSpec, seed: int):
    view = View("image", image_size=8, channels=1)
    return build_task(load_catalog("digits", None), spec, SplitSpec(0.5, 0.1, 0.4), view, seed)[0]


def _learner(seed: int, spec: TaskSpec | None) -> ContinualLearner:
    learner = ContinualLearner(MODEL, "image", "packnet", seed, genesis=GENESIS)
    if spec is None:
        return untrained_learner(learner)
    learn_task(learner, _task(spec, 0), MethodConfig(name="packnet"), TrainOptions(epochs=3, batch_size=64))
    return learner


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", default="256,1024", help="view sizes, comma-separated")
    parser.add_argument("--max-candidates", default="8,0", help="selection.max_candidates values (0: all)")
    parser.add_argument("--servers", type=int, default=8, help="in-process servers the peer ids alias")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--all-up-to", type=int, default=256, help="skip max_candidates 0 above this view size")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="crossback-selscale-"))
    snaps = {f"s{i}": published(root / f"s{i}", 1, lambda i=i: _learner(10 + i, TASKS[i % 2] if i else None))
             for i in range(args.servers)}
    rx = _learner(1, TASKS[0])
    data = _task(TASKS[0], 0)
    strategy = make_strategy(TransferConfig(borrow="backbone"))
    rows = []
    with serve_snapshots(snaps, root / "logs") as addresses:
        servers = list(addresses.values())
        for n in (int(x) for x in args.peers.split(",")):
            view = [(f"p{j:05d}", servers[j % len(servers)]) for j in range(n)]
            for m in (int(x) for x in args.max_candidates.split(",")):
                if m == 0 and n > args.all_up_to:
                    continue
                cfg = SelectionConfig(score="kv_motion", shortlist=2, max_candidates=m, deadline=600.0,
                                      probe=ProbeSpec(pair_count=8, token_count=4))
                runs, history = [], ProbeHistory(seed=0)
                for _ in range(args.repeats):
                    clients = ClientPool(lambda a, _e: PeerClient(a, "rx", CallPolicy(timeout=60.0, attempts=1)),
                                         max_clients=4096)
                    started = time.perf_counter()
                    sel = select(TaskAtHand(rx, 0, data), PeerAccess("rx", view, clients, genesis_id(GENESIS, MODEL), history),
                                 cfg, strategy)
                    runs.append((time.perf_counter() - started, sum(c.bytes for c in sel.candidates),
                                 len(sel.candidates) + len(sel.skipped)))
                    clients.close()
                rows.append({"peers": n, "max_candidates": m, "probed": runs[0][2],
                             "seconds_median": round(statistics.median(r[0] for r in runs), 4),
                             "bytes_median": statistics.median(r[1] for r in runs)})
                print(json.dumps(rows[-1]), file=sys.stderr)
    figures = {"machine": f"{cpu_name()} ({os.cpu_count()} cores)", "servers": args.servers, "repeats": args.repeats,
               "score": "kv_motion", "shortlist": 2, "rows": rows}
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
