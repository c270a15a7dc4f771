"""`crossback predict` as a user runs it: image files and strings through a finished task's folded model,
on a `crossback train` run folder and on a node's state folder; its predictions are what
`crossback evaluate` scored."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from crossback.data.sources import load_catalog
from crossback.config.run import parse_config
from crossback.app.train_run import evaluate_run, run_training
from crossback.data.prepare import prepare_tasks

from conftest import tiny_node_config

TINY_MODEL = {"token_dim": 32, "num_latents": 8, "latent_dim": 32, "depth": 1, "cross_dim_head": 16,
              "latent_heads": 2, "latent_dim_head": 16, "queries_dim": 32, "image": {"channels": 1, "patch_size": 2}}


def crossback(*args) -> subprocess.CompletedProcess:
    """A real `crossback` process."""
    return subprocess.run([sys.executable, "-m", "crossback.app.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def cli(*args) -> subprocess.CompletedProcess:
    """The same command in this process (its parsing, errors and exit code; no interpreter start-up)."""
    import contextlib
    import io

    from crossback.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def train(folder: Path, cfg: dict) -> Path:
    run_training(parse_config(cfg, "test"), folder, progress=False, log=lambda *_: None)
    return folder


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    cfg = {"seed": 0, "data": {"source": "digits", "modality": "image", "image_size": 8}, "model": TINY_MODEL,
           "tasks": [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5", "6"]}],
           "method": {"name": "packnet"}, "train": {"epochs": 3, "batch_size": 64}}
    return train(tmp_path_factory.mktemp("digits") / "run", cfg), cfg


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    cfg = {"seed": 0, "data": {"source": "emoji", "modality": "text"},
           "model": {**TINY_MODEL, "text": {"max_length": 40}},
           "tasks": [{"name": "t", "classes": ["animal-mammal", "drink", "tool"]}],
           "method": {"name": "piggyback"}, "train": {"epochs": 8, "batch_size": 32}}
    return train(tmp_path_factory.mktemp("text") / "run", cfg), cfg


def test_image_files_predicted_from_disk_reproduce_evaluate_exactly(digits_run, tmp_path):
    run, cfg = digits_run
    recomputed, _ = evaluate_run(run)
    tasks, _ = prepare_tasks(parse_config(cfg, "test"))
    test = tasks[1].test  # task b, learned second: its model holds the first task's frozen weights too
    files = []
    for i, image in enumerate(test.inputs):  # uint8 1x8x8: written losslessly as the files a user would have
        path = tmp_path / f"item-{i:03d}.png"
        Image.fromarray(image[0].numpy(), mode="L").save(path)
        files.append(path)
    proc = crossback("predict", "--state", run, "--task", "b", "--json", "--top", "2", *files)
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    classes = tasks[1].classes
    assert [a["input"] for a in answers] == [str(f) for f in files]
    correct = sum(a["label"] == classes[int(y)] for a, y in zip(answers, test.labels))
    # exactly the items evaluate counted (it reports a float32 mean): the same logits' argmax, item by item
    assert correct == round(recomputed[1] * len(answers)) and abs(correct / len(answers) - recomputed[1]) < 1e-6
    for a in answers:
        (first, p1), (second, p2) = ((t["class"], t["probability"]) for t in a["top"])
        assert first == a["label"] and p1 >= p2 and first != second and 0 < p1 <= 1


def test_strings_from_a_text_file_reproduce_evaluate_exactly(text_run, tmp_path):
    from crossback.data.tasks import task_items

    run, cfg = text_run
    recomputed, _ = evaluate_run(run)
    parsed = parse_config(cfg, "test")
    classes, parts = task_items(load_catalog("emoji"), parsed.tasks[0], parsed.data.split, parsed.view(), parsed.seed)
    items, labels = parts["test"]
    texts, truth = [], []
    for item, y in zip(items, labels):
        texts += item.texts
        truth += [classes[y]] * len(item.texts)
    lines = tmp_path / "names.txt"
    lines.write_text("\n".join(texts) + "\n", encoding="utf-8")
    proc = cli("predict", "--state", run, "--task", "t", "--json", "--text-file", lines)
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    assert [a["input"] for a in answers] == texts
    correct = sum(a["label"] == t for a, t in zip(answers, truth))
    assert correct == round(recomputed[0] * len(texts)) and abs(correct / len(texts) - recomputed[0]) < 1e-6
    table = cli("predict", "--state", run, "--task", "t", "--top", "1", texts[0], "a thing never seen")
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 2
    assert table.stdout.splitlines()[0].split("\t")[1] == answers[0]["label"]


def test_a_node_state_folder_works_the_same(tmp_path):
    cfg = {**tiny_node_config(0, [{"name": "a", "classes": ["0", "1", "2"]}], 1.0, 5.0), "node": {"exit_when_done": True}}
    (tmp_path / "n.yaml").write_text(yaml.safe_dump(cfg))
    state = tmp_path / "state"
    done = crossback("node", "--config", tmp_path / "n.yaml", "--node-id", "n", "--listen", "127.0.0.1:0",
                     "--state-dir", state, "--log-dir", tmp_path / "logs")
    assert done.returncode == 0, done.stderr[-2000:]
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(image)
    proc = cli("predict", "--state", state, "--task", "a", image)
    assert proc.returncode == 0, proc.stderr
    label = proc.stdout.split("\t")[1]
    assert label in {"0", "1", "2"}


def test_bad_requests_are_refused_naming_what_is_wrong(digits_run, tmp_path):
    run, _ = digits_run
    unknown = cli("predict", "--state", run, "--task", "zz", tmp_path / "x.png")
    assert unknown.returncode == 2 and "no finished task 'zz'" in unknown.stderr and "['a', 'b']" in unknown.stderr
    missing = cli("predict", "--state", run, "--task", "a", tmp_path / "nope.png")
    assert missing.returncode == 2 and "cannot read image" in missing.stderr and "nope.png" in missing.stderr
    not_a_run = cli("predict", "--state", tmp_path, "--task", "a", "x")
    assert not_a_run.returncode == 2 and "config.json" in not_a_run.stderr
    nothing = cli("predict", "--state", run, "--task", "a")
    assert nothing.returncode == 2 and "INPUT" in nothing.stderr


def test_a_corrupt_checkpoint_is_refused_not_used(digits_run, tmp_path):
    import shutil

    run, _ = digits_run
    copy = shutil.copytree(run, tmp_path / "run")
    victim = copy / "checkpoints" / "task-002" / "shared.safetensors"
    data = bytearray(victim.read_bytes())
    at = random.Random(0).randrange(len(data) // 2, len(data))
    data[at] ^= 0xFF
    victim.write_bytes(bytes(data))
    proc = cli("predict", "--state", copy, "--task", "a", tmp_path / "x.png")
    assert proc.returncode == 2 and "shared.safetensors is corrupt" in proc.stderr


# ---------------------------------------------------------------- the Classify RPC

def bomb_png(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes whose header declares width x height grey pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def serving_node(tmp_path_factory):
    from conftest import start_serving, stop_nodes

    root = tmp_path_factory.mktemp("classify")
    tasks = [{"name": "a", "classes": ["0", "1", "2"]}, {"name": "b", "classes": ["3", "4", "5", "6"]}]
    cfg = tiny_node_config(0, tasks, 0.5, 3.0)
    cfg["node"]["serve"] = ["kv", "ddv", "backbone", "classify"]
    procs = {}
    try:
        address = start_serving(root, procs, "clf", cfg, [])
        yield root, address, cfg
    finally:
        stop_nodes(procs)


def test_classify_over_grpc_answers_what_predict_answers_locally(serving_node, tmp_path):
    root, address, cfg = serving_node
    run_cfg = {k: v for k, v in cfg.items() if k not in ("node", "selection", "adaptation")}
    test = prepare_tasks(parse_config(run_cfg, "test"))[0][1].test
    files = []
    for i, image in enumerate(test.inputs[:40]):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(image[0].numpy(), mode="L").save(files[-1])
    remote = cli("predict", "--target", address, "--task", "b", "--json", "--top", "3", *files)
    local = cli("predict", "--state", root / "state" / "clf", "--task", "b", "--json", "--top", "3", *files)
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    r, l = json.loads(remote.stdout), json.loads(local.stdout)
    assert [a["label"] for a in r] == [a["label"] for a in l]
    for a, b in zip(r, l):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert all(abs(x["probability"] - y["probability"]) < 1e-5 for x, y in zip(a["top"], b["top"]))


def test_classify_refuses_bombs_long_strings_unknown_tasks_and_stays_healthy(serving_node):
    import grpc

    from crossback.node.transport import CallPolicy, PeerClient

    _, address, _ = serving_node
    client = PeerClient(address, "app", CallPolicy(timeout=10.0, attempts=1))
    try:
        bomb = bomb_png(12_000, 12_000)  # 144 megapixels declared in a file of a few hundred bytes
        assert len(bomb) < 1024
        for kwargs, code, words in (
                ({"images": [bomb_png(8, 8)[:20], bomb]}, "INVALID_ARGUMENT", "item 0: not a readable image"),
                ({"images": [bomb]}, "INVALID_ARGUMENT", "item 0: declares 12000 x 12000 pixels"),
                ({"texts": ["x" * (1 << 20)]}, "INVALID_ARGUMENT", "send images, not texts"),
                ({"images": [bomb] * 300}, "INVALID_ARGUMENT", "1-256 items"),
                ({}, "INVALID_ARGUMENT", "1-256 items")):
            with pytest.raises(grpc.RpcError) as err:
                client.classify("b", **kwargs)
            assert err.value.code().name == code and words in err.value.details(), err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            client.classify("zz", images=[bomb])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "['a', 'b']" in err.value.details()
        assert client.get_info().node_id == "clf"  # still answering
    finally:
        client.close()


def test_a_long_string_is_refused_before_it_is_encoded():
    from crossback.config.data import View
    from crossback.node.classify import ItemError, plan_request

    with pytest.raises(ItemError, match="item 1: a string of 1048576 characters"):
        plan_request([], ["fine", "x" * (1 << 20)], View("text", text_max_length=40))
    assert plan_request([], ["fine"], View("text", text_max_length=40)).inputs().shape[0] == 1


def test_a_node_that_does_not_serve_classify_refuses_it(tmp_path):
    import grpc

    from conftest import start_inprocess_node
    from crossback.node.transport import CallPolicy, PeerClient

    address, _, stop = start_inprocess_node(tmp_path, "plain")
    client = PeerClient(address, "app", CallPolicy(timeout=5.0, attempts=1))
    try:
        with pytest.raises(grpc.RpcError) as err:
            client.classify("a", images=[bomb_png(8, 8)])
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "classify" in err.value.details()
    finally:
        client.close()
        stop()


def _png(size: tuple[int, int], mode: str = "1") -> bytes:
    import io

    out = io.BytesIO()
    Image.new(mode, size, 0).save(out, "PNG")
    return out.getvalue()


def test_a_requests_decode_is_counted_from_headers_before_any_pixel_is_decoded():
    import io

    from crossback.config.data import View
    from crossback.node.classify import MAX_REQUEST_PIXELS, OverBudget, pixel_budget, plan_request

    view = View("image", image_size=32, channels=3)
    bomb = _png((4096, 4096))  # 2 KB that decode to 16.8 megapixels
    assert len(bomb) < 4096 and pixel_budget(256, view) == MAX_REQUEST_PIXELS
    with pytest.raises(OverBudget, match=r"item 2: the images up to this one decode to 50\.3 megapixels.*at most 48\.0"):
        plan_request([bomb] * 256, [], view)
    plan = plan_request([bomb, bomb] + [_png((32, 32))] * 254, [], view)  # within the budget: answered
    assert plan.held_bytes == 4096 * 4096 * 8 + 256 * 3 * 32 * 32
    assert plan.inputs().shape == (256, 3, 32, 32)
    photo = io.BytesIO()  # a camera-sized JPEG decodes at the scale that still covers the view
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(
        photo, "JPEG", quality=30)
    plan = plan_request([photo.getvalue()], [], view)
    assert plan.images[0].size == (500, 375) and plan.inputs().shape == (1, 3, 32, 32)


def test_decoding_and_classifying_stop_when_the_check_says_the_caller_is_gone(digits_run):
    from crossback.config.data import View
    from crossback.app.predict import load_task_model
    from crossback.models.inference import classify
    from crossback.node.classify import plan_request

    class Gone(Exception):
        pass

    def gone_after(n: int, calls: list):
        def check():
            calls.append(1)
            if len(calls) > n:
                raise Gone
        return check

    calls = []
    plan = plan_request([_png((64, 64))] * 10, [], View("image", image_size=8, channels=1))
    with pytest.raises(Gone):
        plan.inputs(gone_after(3, calls))
    assert len(calls) == 4  # one check per item: the fourth stopped the decode
    run, _ = digits_run
    model = load_task_model(run, "a")
    inputs = plan_request([_png((8, 8))] * 100, [], model.view).inputs()
    calls = []
    with pytest.raises(Gone):
        classify(model, inputs, batch_size=32, check=gone_after(1, calls))
    assert len(calls) == 2  # one check per batch of 32
