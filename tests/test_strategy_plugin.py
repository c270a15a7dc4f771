"""A fifth transfer strategy, written here and registered from this file, runs through a real selection
(peers served over gRPC, K/V + DDV probes, stage-2 fetch, arms, the keep decision) without any other
module of crossback naming it: the strategy interface and the registry are all selection needs."""
import pytest
import torch
import yaml
from conftest import tiny_config

from crossback.bench.peers import published, serve_snapshots
from crossback.config.errors import ConfigError
from crossback.config.model import MethodConfig, PackNetOptions, TrainOptions
from crossback.config.selection import ExperimentConfig, SelectionConfig
from crossback.config.transfer import TransferConfig
from crossback.models.borrowed import part_names
from crossback.models.learner import ContinualLearner
from crossback.models.methods import learn_task
from crossback.models.training import predict
from crossback.node.node_config import load_node_config
from crossback.node.transport import CallPolicy, ClientPool, PeerClient
from crossback.orchestrator_free.backbone import ArmPlan, PeerAccess, transfer_step
from crossback.orchestrator_free.selection import TaskAtHand
from crossback.orchestrator_free.genesis import genesis_id
from crossback.transfer.base import AdaptOptions, Strategy
from crossback.transfer.crossback import adapt_on_parts
from crossback.transfer.registry import make_strategy, registered, strategy_names

OPTS = TrainOptions(epochs=2, batch_size=64)
PACKNET = MethodConfig(name="packnet", packnet=PackNetOptions(0.5, 1))
GENESIS = 23


class LatentsOnly(Strategy):
    """Borrow only the peer's latent array and adapt on it (the toy a researcher might try first)."""

    name = "latents-only"
    borrow = "latents"
    needs = frozenset({"kv", "latents"})

    def __init__(self):
        self.calls = []

    def adapt(self, learner, task, data, payload, opts, generator):
        self.calls.append(None if payload is None else sorted(payload))
        facts = adapt_on_parts(learner, task, data, payload, opts, generator)
        return facts | {"latents_only": payload is not None}


def _learner(seed: int) -> ContinualLearner:
    return ContinualLearner(tiny_config(), "image", "packnet", seed, genesis=GENESIS)


@pytest.fixture(scope="module")
def donors(tmp_path_factory, digits_tasks):
    root = tmp_path_factory.mktemp("plugin")

    def learned(seed, data):
        learner = _learner(seed)
        learn_task(learner, data, PACKNET, OPTS)
        return learner

    snaps = {f"d-{i}": published(root / f"d-{i}", 1, lambda i=i: learned(30 + i, digits_tasks[i])) for i in range(2)}
    with serve_snapshots(snaps, root / "logs") as addresses:
        yield addresses


def test_an_unregistered_name_is_refused_naming_the_ones_there_are():
    with pytest.raises(ConfigError, match=r"transfer.strategy: 'latents-only' is not one of \['crossback'"):
        make_strategy(TransferConfig(strategy="latents-only"))
    assert strategy_names() == ("crossback", "mergenet", "mona", "freqkd")


def test_a_registered_strategy_is_a_valid_config_value_only_while_registered(tmp_path):
    path = tmp_path / "n.yaml"
    path.write_text(yaml.safe_dump({"tasks": ["Smileys & Emotion"], "node": {"node_id": "n", "device": "cpu"},
                                    "transfer": {"strategy": "latents-only"}}))
    toy = LatentsOnly()
    with registered("latents-only", lambda cfg, ctx: toy):
        assert make_strategy(load_node_config(path, {}, {}).transfer) is toy
        with pytest.raises(ValueError, match="already registered"):
            with registered("latents-only", lambda cfg, ctx: toy):
                pass
    with pytest.raises(ConfigError, match=f"{path}: transfer.strategy: 'latents-only' is not one of"):
        load_node_config(path, {}, {})


def test_a_fifth_strategy_runs_through_a_real_selection(donors, digits_tasks):
    toy = LatentsOnly()
    rx = _learner(1)
    learn_task(rx, digits_tasks[0], PACKNET, OPTS)
    learn_task(rx, digits_tasks[1], PACKNET, OPTS)
    probe = digits_tasks[0].test.inputs
    before = predict(rx, 0, probe)
    events = []
    clients = ClientPool(lambda a, _e: PeerClient(a, "rx", CallPolicy(timeout=30.0, attempts=1)))
    try:
        with registered("latents-only", lambda cfg, ctx: toy):
            strategy = make_strategy(TransferConfig(strategy="latents-only"))
            access = PeerAccess("rx", sorted(donors.items()), clients, genesis_id(GENESIS, rx.cfg))
            out = transfer_step(TaskAtHand(rx, 1, digits_tasks[1]), access, SelectionConfig(score="logme"),
                                ArmPlan(strategy, AdaptOptions(epochs=1, train=OPTS), 5),
                                lambda event, **f: events.append({"event": event, **f}), ExperimentConfig(random=False))
    finally:
        clients.close()
    (selected,) = [e for e in events if e["event"] == "backbone_selected"]
    assert selected["strategy"] == "latents-only" and selected["borrow"] == "latents"
    assert selected["chosen"] in donors and {c["peer"] for c in selected["candidates"]} == set(donors)
    latents = sorted(part_names("latents", rx.part_shapes(1)))
    # the none arm and the selected arm, each adapted by the strategy itself, the latter on the peer's latents
    assert toy.calls == [None, latents]
    assert out["arms"]["selected"]["facts"]["latents_only"] is True and out["kept"] in ("selected", "none")
    assert torch.equal(predict(rx, 0, probe), before)  # zero forgetting holds for a strategy we never saw


def test_a_benchmark_naming_an_unknown_strategy_fails_before_anything_trains(tmp_path, capsys):
    from crossback.app.cli import main

    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({"nodes": [{"name": "r", "role": "receiver", "tasks": ["Smileys & Emotion"]}],
                                    "transfer": {"strategy": "latents-only"}}))
    assert main(["bench", "transfer", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert f"{path}: transfer.strategy: 'latents-only' is not one of ['crossback'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["demo", "--out", str(tmp_path / "demo"), "--strategy", "nope"]) == 2
    assert "--strategy: 'nope' is not one of" in capsys.readouterr().err
