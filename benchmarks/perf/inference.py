"""Inference speed of a finished task of the compose image model, every way crossback can run it:

    python benchmarks/perf/inference.py                  # prints a table and JSON
    python benchmarks/perf/inference.py --json out.json --device cuda

- ``masked``: the learner's own forward (masks recomputed every call), as `crossback evaluate` runs;
- ``folded``: ``models.fold`` (plain weights), as `crossback predict` runs;
- ``onnxruntime``: the `crossback export --format onnx` file in ONNX Runtime (CPU provider);
- ``torchscript``: the `--format torchscript` file in torch;
- ``classify_rpc``: a real node process's Classify RPC on loopback (PNG bytes in, labels out), beside
  ``in_process``: the same decode + folded forward in this process; both while the node is idle and
  while it trains its next task.

Items/s and p50/p99 latency per call at batch 1, 32 and 512 (the RPC: 1 and 32). All arms run in
one process, interleaved per batch size, on this machine's cores; ratios are what to compare.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compose_node import compose_config, print_report, start_node  # noqa: E402
from masked_step import cpu_name  # noqa: E402

BATCHES = (1, 32, 512)
CALLS = {1: 200, 32: 40, 512: 8}


def timed(fn, calls: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def summary(times: list[float], batch: int) -> dict:
    ordered = sorted(times)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"items_per_s": round(batch / statistics.median(times), 1), "p50_ms": round(1000 * p(0.5), 3),
            "p99_ms": round(1000 * p(0.99), 3), "calls": len(times)}


def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height grey pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def refusals(client, task: str) -> dict:
    """Milliseconds to refuse a 144-megapixel PNG over the RPC, and a 1 MiB string in the request check."""
    import grpc

    from crossback.config.data import View
    from crossback.node.classify import ItemError, plan_request

    bomb = bomb_png(12_000, 12_000)

    def send_bomb():
        try:
            client.classify(task, images=[bomb])
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
            return
        raise AssertionError("the bomb was classified")

    def long_string():
        try:
            plan_request([], ["x" * (1 << 20)], View("text", text_max_length=48))
        except ItemError:
            return
        raise AssertionError("the string was accepted")

    healthy = client.get_info().snapshot_version
    return {"bomb_png_bytes": len(bomb), "bomb_rpc": summary(timed(send_bomb, 50), 1),
            "string_1mib_check": summary(timed(long_string, 50), 1),
            "healthy_after": client.get_info().snapshot_version == healthy}


def image_pool(view, n: int = 512) -> tuple[np.ndarray, list[bytes]]:
    """``n`` random images in the task's view, and the first 32 as PNG files' bytes (what a client sends)."""
    pool = np.random.default_rng(0).integers(0, 256, (n, view.image_size, view.image_size, view.channels), dtype=np.uint8)
    pngs = []
    for a in pool[:32]:
        buf = io.BytesIO()
        Image.fromarray(a.squeeze(-1) if view.channels == 1 else a).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return pool, pngs


def local_arms(state: Path, task: str, folder: Path, tm, pool: np.ndarray, device: str, arms: dict) -> None:
    """In-process inference: the masked learner, the folded model, ONNX Runtime and TorchScript."""
    import onnxruntime as ort

    from crossback.app.export import export_task
    from crossback.data.tasks import image_inputs
    from crossback.models.persistence import latest_checkpoint, load_checkpoint
    from crossback.models.training import predict as masked_predict

    learner, _ = load_checkpoint(latest_checkpoint(state / "checkpoints"))
    learner.to(device)
    export_task(state, task, "onnx", folder / "m.onnx")
    export_task(state, task, "torchscript", folder / "m.pt")
    session = ort.InferenceSession(str(folder / "m.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(folder / "m.pt")).to(device)
    x_all = image_inputs(list(pool), tm.view)
    for batch in BATCHES:
        x, xn = x_all[:batch].to(device), x_all[:batch].numpy()
        with torch.no_grad():
            runs = {"masked": lambda: masked_predict(learner, 0, x, batch_size=512),
                    "folded": lambda: tm.model(x),
                    "onnxruntime": lambda: session.run(None, {"inputs": xn}),
                    "torchscript": lambda: scripted(x)}
            for name, fn in runs.items():
                arms.setdefault(name, {})[batch] = summary(timed(fn, CALLS[batch]), batch)


def rpc_arms(client, task: str, tm, pngs: list[bytes], device: str, arms: dict, phase: str) -> None:
    """The Classify RPC against decoding and classifying the same PNGs in-process, at batch 1 and 32."""
    from crossback.data.tasks import image_inputs, load_image

    def in_process(batch):
        def run():
            arrays = [load_image(np.asarray(Image.open(io.BytesIO(b)).convert("RGB")), tm.view) for b in pngs[:batch]]
            with torch.no_grad():
                tm.model(image_inputs(arrays, tm.view).to(device)).argmax(1)
        return run

    for batch in (1, 32):
        arms.setdefault(f"classify_rpc_{phase}", {})[batch] = summary(
            timed(lambda: client.classify(task, images=pngs[:batch]), CALLS[batch]), batch)
        arms.setdefault(f"in_process_{phase}", {})[batch] = summary(timed(in_process(batch), CALLS[batch]), batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the first task (the one classified)")
    args = parser.parse_args(argv)

    from crossback.app.predict import load_task_model
    from crossback.node.transport import CallPolicy, PeerClient

    report = {"machine": cpu_name(), "torch_threads": torch.get_num_threads(), "device": args.device, "arms": {}}
    arms = report["arms"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # the node learns its first task and serves it (idle: every in-process arm is measured then too);
        # restarted with two more tasks of many epochs, it resumes, serves that snapshot and trains (busy)
        serve = ["kv", "ddv", "backbone", "classify"]
        idle_cfg = compose_config(folder, "bench", epochs=args.epochs, tasks=1, serve=serve)
        busy_cfg = compose_config(folder, "bench", epochs=500, tasks=3, serve=serve)
        task = idle_cfg["tasks"][0]
        state, log = folder / "state", folder / "logs" / "bench.jsonl"
        events = lambda: [json.loads(x)["event"] for x in log.read_text().splitlines()]  # noqa: E731
        proc, address = start_node(folder, idle_cfg, until="snapshot_published")
        client = PeerClient(address, "bench", CallPolicy(timeout=60.0, attempts=1))
        try:
            while "serving" not in events():
                time.sleep(0.5)
            tm = load_task_model(state, task, args.device)
            pool, pngs = image_pool(tm.view)
            local_arms(state, task, folder, tm, pool, args.device, arms)
            rpc_arms(client, task, tm, pngs, args.device, arms, "idle")
            report["refusals"] = refusals(client, task)
            client.close()
            proc.terminate()
            proc.wait(timeout=60)
            proc, address = start_node(folder, busy_cfg, until="snapshot_published")  # resumes task 1, trains task 2
            client = PeerClient(address, "bench", CallPolicy(timeout=60.0, attempts=1))
            while "task_started" not in events()[-5:]:
                time.sleep(0.2)
            rpc_arms(client, task, tm, pngs, args.device, arms, "while_training")
            report["node_was_training"] = events()[-1] != "task_finished" and "tasks_done" not in events()[-3:]
        finally:
            client.close()
            proc.terminate()
            proc.wait(timeout=60)
    for name, rows in report["arms"].items():
        print(f"{name:28s} " + "  ".join(f"b{b}: {r['items_per_s']:>9.1f}/s p50 {r['p50_ms']:7.2f} p99 {r['p99_ms']:7.2f} ms"
                                         for b, r in rows.items()))
    print_report(report, args.json)
    return 0

if __name__ == "__main__":
    sys.exit(main())
