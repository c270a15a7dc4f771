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
