"""What a node advertises when it listens on every interface."""
from crossback.node.addresses import advertise_address, join_host_port, route_source, split_host_port


def test_configured_advertise_wins():
    assert advertise_address("0.0.0.0:50061", 50061, "laptop.lan:50061", ["127.0.0.1:1"]) == ("laptop.lan:50061", "configured")


def test_a_concrete_listen_host_is_advertised_with_the_bound_port():
    assert advertise_address("127.0.0.1:0", 41234, None, []) == ("127.0.0.1:41234", "listen address")


def test_wildcard_listen_advertises_the_interface_that_routes_to_the_seed():
    address, how = advertise_address("0.0.0.0:50061", 50061, None, ["127.0.0.1:50051"])
    assert address == "127.0.0.1:50061" and how == "route to seed 127.0.0.1:50051"
    assert route_source("no-such-host.invalid:9") is None


def test_unresolvable_seeds_fall_back_to_a_dialable_address():
    address, how = advertise_address("0.0.0.0:50061", 50061, None, ["no-such-host.invalid:50051"])
    host, port = split_host_port(address)
    assert port == 50061 and host not in ("0.0.0.0", "", "::")
    assert how in ("host name", "loopback (no seed or host name resolves)")


def test_ipv6_hosts_are_bracketed():
    assert join_host_port("::1", 5) == "[::1]:5" and split_host_port("[::1]:5") == ("::1", 5)
    assert advertise_address("[::1]:0", 7, None, []) == ("[::1]:7", "listen address")


# ---------------------------------------------------------------- gRPC schemes are never dialled

import socket  # noqa: E402
import threading  # noqa: E402

import grpc  # noqa: E402
import pytest  # noqa: E402

from crossback.orchestrator_free.identity import address_problem, dial_target  # noqa: E402
from crossback.node.tls_material import open_channel

SCHEME_ADDRESSES = ["unix-abstract:50183", "unix:50084", "xds:50085", "dns:50086", "ipv4:50087", "ipv6:50088",
                    "vsock:50089", "google-c2p:50090", "passthrough:50091", "UNIX:50092"]


@pytest.mark.parametrize("address", SCHEME_ADDRESSES)
def test_a_grpc_scheme_is_not_a_host(address):
    assert "gRPC scheme" in address_problem(address)
    with pytest.raises(ValueError, match="gRPC scheme"):
        open_channel(address, [], None, None)


def test_dial_targets_name_their_scheme_explicitly():
    assert dial_target("10.0.0.7:50061") == "ipv4:10.0.0.7:50061"
    assert dial_target("[::1]:50061") == "ipv6:[::1]:50061"
    assert dial_target("img-0:50061") == "dns:///img-0:50061"
    assert dial_target("unixbox.lan:1") == "dns:///unixbox.lan:1"  # a scheme's name inside a host name is fine
    for bad in ("unix:/tmp/x", "host", "a b:1", "[1.2.3.4]:5", "127.0.0.1:0"):
        with pytest.raises(ValueError):
            dial_target(bad)


def test_a_peer_named_unix_port_never_reaches_a_socket_file_or_the_abstract_namespace(tmp_path, monkeypatch):
    """Listeners where the old parsing would have connected: an abstract socket @50183 and a socket file
    named 50084 in the working directory. Dialling what gossip could carry reaches neither."""
    monkeypatch.chdir(tmp_path)
    accepted = []
    listeners = []
    for name in ("\0" + "50183", "50084"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(name)
        sock.listen(4)
        sock.settimeout(0.2)
        listeners.append(sock)

    def accept_all():
        for sock in listeners:
            try:
                accepted.append(sock.accept())
            except OSError:
                pass

    from crossback.orchestrator_free.membership import Membership

    view = Membership("me", "127.0.0.1:1", [], 5.0)
    view.learn("x", "unix-abstract:50183")  # what a hostile ExchangePeers carries
    view.learn("y", "unix:50084")
    assert view.candidates() == []  # never stored, so never dialled
    for address in ("unix-abstract:50183", "unix:50084"):
        with pytest.raises(ValueError):
            open_channel(address, [], None, None)
    # and a raw gRPC channel on the same strings *would* reach them: the test would notice a regression
    channel = grpc.insecure_channel("unix:50084")
    with pytest.raises(grpc.FutureTimeoutError):
        grpc.channel_ready_future(channel).result(timeout=0.5)
    channel.close()
    accept_thread = threading.Thread(target=accept_all)
    accept_thread.start()
    accept_thread.join()
    assert accepted, "the control dial did not reach the socket file: this test could not see a regression"
    for sock in listeners:
        sock.close()
