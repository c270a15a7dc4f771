"""The gRPC client is one implementation of the PeerApi protocol selection is written against: every
method the protocol names exists on it with the same parameters and defaults."""
import inspect

from crossback.node.transport import ClientPool, PeerClient
from crossback.orchestrator_free.messages import PeerApi, PeerClients


def _methods(protocol) -> list[str]:
    return [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]


def test_the_grpc_client_satisfies_the_peer_api():
    client = PeerClient("127.0.0.1:1", "me")
    try:
        assert isinstance(client, PeerApi)
    finally:
        client.close()
    names = _methods(PeerApi)
    assert {"get_info", "fetch_kv", "probe_ddv", "fetch_payload", "match_task", "fetch_task"} <= set(names)
    for name in names:
        want = inspect.signature(getattr(PeerApi, name)).parameters
        have = inspect.signature(getattr(PeerClient, name)).parameters
        assert [(p.name, p.default) for p in want.values()] == [(p.name, p.default) for p in have.values()], name
    for name in _methods(PeerClients):
        want = inspect.signature(getattr(PeerClients, name)).parameters
        have = inspect.signature(getattr(ClientPool, name)).parameters
        assert [(p.name, p.default) for p in want.values()] == [(p.name, p.default) for p in have.values()], name
