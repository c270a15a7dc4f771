"""The config package lists the names a setting may take without importing what implements them; these
checks keep each list equal to the implementation's, so a value the schema accepts always exists."""
import inspect

from crossback.config import data as data_cfg
from crossback.config import model as model_cfg
from crossback.config import node as node_cfg
from crossback.config import selection as selection_cfg
from crossback.config import transfer as transfer_cfg
from crossback.data import sources
from crossback.models import borrowed, image_encoders, learner, text_encoders
from crossback.node import server
from crossback.orchestrator_free import scores
from crossback.transfer import mergenet


def test_data_sources_models_and_methods_are_the_implemented_ones():
    assert data_cfg.SOURCES == tuple(sources.BUNDLED) + tuple(sources.ON_DISK)
    assert model_cfg.IMAGE_ENCODERS == image_encoders.IMAGE_ENCODERS
    assert model_cfg.TEXT_ENCODERS == text_encoders.TEXT_ENCODERS
    assert model_cfg.METHODS == learner.METHODS
    assert transfer_cfg.MERGENET_MATRICES == tuple(mergenet.MATRICES)
    for kind in transfer_cfg.PART_KINDS:
        assert borrowed.part_names(kind, {"core.latents": (1,)}) is not None


def test_every_score_the_schema_accepts_is_computed():
    source = inspect.getsource(scores.Receiver)
    for name in selection_cfg.SCORES:
        assert f'"{name}"' in source, f"selection score {name!r} has no implementation in scores.Receiver"


def test_every_payload_kind_a_node_may_serve_is_answered_by_the_server():
    source = inspect.getsource(server.PeerServicer)
    for kind in node_cfg.PAYLOAD_KINDS:
        served = kind in server.TENSOR_KINDS or f'"{kind}"' in source  # FetchPayload answers the tensor kinds
        assert served, f"node.serve: {kind!r} is answered by no handler"
