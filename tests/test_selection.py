import pytest
import torch

from crossback.orchestrator_free.reasons import call_failed
from crossback.orchestrator_free.selection import Candidate, Payload, Probe, Scores, choose, score_ddvs, zscore


def test_identical_ddvs_score_highest():
    a = torch.rand(32, generator=torch.Generator().manual_seed(0))
    cos, euc, score = score_ddvs(a, a, euc_weight=0.5)
    assert cos == pytest.approx(1.0) and euc == 0.0 and score == pytest.approx(1.0)


def test_z_scoring_removes_the_common_offset_raw_distances_share():
    g = torch.Generator().manual_seed(1)
    a, b = 5.0 + torch.rand(64, generator=g), 5.0 + torch.rand(64, generator=g)
    raw_cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    cos, _, _ = score_ddvs(a, b, 0.5)
    assert raw_cos > 0.99 and abs(cos) < 0.5  # unrelated vectors look alike only before z-scoring


def test_scale_disagreement_lowers_the_score():
    a = torch.rand(16, generator=torch.Generator().manual_seed(2))
    same_shape_other_scale = score_ddvs(a, 3 * a, 0.5)
    assert same_shape_other_scale[0] == pytest.approx(1.0) and same_shape_other_scale[1] == pytest.approx(0.5)
    assert same_shape_other_scale[2] < score_ddvs(a, a, 0.5)[2]


def test_zscore_of_a_constant_is_zero():
    assert torch.equal(zscore(torch.full((4,), 3.0)), torch.zeros(4))


def test_choose_is_argmax_of_score_with_deterministic_ties():
    cands = [Candidate("c", "h:3", scores=Scores(rank=0.4)), Candidate("b", "h:2", scores=Scores(rank=0.9)),
             Candidate("a", "h:1", scores=Scores(rank=0.9)),
             Candidate("d", "h:4", scores=Scores(rank=2.0), failure=call_failed("UNAVAILABLE", "gone"))]
    chosen, reason = choose(cands)
    assert chosen.peer == "a" and "margin 0.0000" in reason  # tie broken by peer id; failed peer ignored


def test_choose_without_candidates():
    assert choose([]) == (None, "no eligible peer")
    assert choose([Candidate("a", "h:1", failure=call_failed("DEADLINE_EXCEEDED", "late"))])[0] is None


def test_ddvs_computed_from_many_threads_equal_sequential_ones(digits_tasks):
    """functional_call swaps tensors into shared modules: parallel probes must not see each other's."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import tiny_config
    from crossback.models.learner import ContinualLearner
    from crossback.config.model import MethodConfig
    from crossback.models.methods import learn_task
    from crossback.config.model import TrainOptions
    from crossback.config.selection import ProbeSpec
    from crossback.orchestrator_free.ddv import ddv

    learner = ContinualLearner(tiny_config(), "image", "packnet", seed=0)
    learn_task(learner, digits_tasks[0], MethodConfig(), TrainOptions(epochs=1, batch_size=64))
    g = torch.Generator().manual_seed(0)
    kvs = [{n: torch.randn(t.shape, generator=g) for n, t in learner.extract_kv(0).items()} for _ in range(6)]
    spec = ProbeSpec(pair_count=64, token_count=32)
    sequential = [ddv(learner, 0, kv, spec) for kv in kvs]
    with ThreadPoolExecutor(6) as pool:
        parallel = list(pool.map(lambda kv: ddv(learner, 0, kv, spec), kvs * 4))
    assert all(torch.equal(p, sequential[i % 6]) for i, p in enumerate(parallel))


def test_local_loss_is_the_validation_loss_through_the_candidates_kv(digits_tasks):
    import torch.nn.functional as F

    from conftest import tiny_config
    from crossback.models.learner import ContinualLearner
    from crossback.config.model import MethodConfig
    from crossback.models.methods import learn_task
    from crossback.config.model import TrainOptions
    from crossback.models.training import predict
    from crossback.models.borrowed import kv_parts
    from crossback.orchestrator_free.scores import Receiver, apply_score

    learner = ContinualLearner(tiny_config(), "image", "packnet", seed=0)
    data = digits_tasks[0]
    learn_task(learner, data, MethodConfig(), TrainOptions(epochs=1, batch_size=64))
    kv = learner.extract_kv(0)
    own = Candidate("own", "h:1", Probe(cos=0.5, euc=0.2, kv=kv), Payload(parts=kv_parts(kv)))
    g = torch.Generator().manual_seed(3)
    other_kv = {n: torch.randn(t.shape, generator=g) for n, t in own.probe.kv.items()}
    other = Candidate("other", "h:2", Probe(cos=0.1, euc=0.4, kv=other_kv), Payload(parts=kv_parts(other_kv)))
    failed = Candidate("gone", "h:3", failure=call_failed("UNAVAILABLE", "down"))
    apply_score("local_loss", [own, other, failed], Receiver(learner, 0, data, euc_weight=0.5))
    assert set(own.scores.by_name) == {"local_loss", "ddv", "ddv_cos"}  # logme costs a forward pass: only when asked
    apply_score("local_loss", [own, other, failed], Receiver(learner, 0, data, euc_weight=0.5), every=True)
    assert set(own.scores.by_name) == {"local_loss", "logme", "logme_kv", "ddv", "ddv_cos"}  # no genesis: no kv_motion
    expected = -float(F.cross_entropy(predict(learner, 0, data.val.inputs), data.val.labels))
    assert own.scores.by_name["local_loss"] == pytest.approx(expected, rel=1e-5) and own.scores.rank == own.scores.by_name["local_loss"]
    assert own.scores.by_name["ddv"] == pytest.approx(0.5 - 0.5 * 0.2) and own.scores.by_name["ddv_cos"] == 0.5
    learner.load_kv(0, other.probe.kv)  # the same task, run on the other K/V
    expected_other = -float(F.cross_entropy(predict(learner, 0, data.val.inputs), data.val.labels))
    learner.borrowed.pop(0)
    assert other.scores.rank == pytest.approx(expected_other, rel=1e-5) and other.scores.rank != own.scores.rank
    assert failed.scores.by_name == {} and failed.scores.rank is None
    with pytest.raises(ValueError, match="unknown selection score"):
        apply_score("vibes", [own], Receiver(learner, 0, data, 0.5))
