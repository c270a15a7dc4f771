"""crossback certs: a swarm CA and node certificates whose identity is the node id."""
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from crossback.node.certs import certificate_node_id, init_ca, issue
from crossback.app.cli import main
from crossback.config.errors import ConfigError
from crossback.orchestrator_free.identity import SWARM_NAME


def test_the_ca_signs_node_certificates_that_name_the_node(tmp_path):
    assert main(["certs", "init", str(tmp_path), "img-0"]) == 0
    assert main(["certs", "issue", str(tmp_path), "txt-0", "txt-1"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "img-0.pem").read_bytes())
    ca.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.issuer == ca.subject and certificate_node_id((tmp_path / "img-0.pem").read_bytes()) == "img-0"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["img-0", SWARM_NAME]  # the id, and membership
    assert {certificate_node_id((tmp_path / f"{n}.pem").read_bytes()) for n in ("txt-0", "txt-1")} == {"txt-0", "txt-1"}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca.key", "img-0.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600


def test_nothing_is_overwritten_and_bad_ids_or_a_missing_ca_are_named(tmp_path, capsys):
    init_ca(tmp_path)
    with pytest.raises(ConfigError, match="never overwritten"):
        init_ca(tmp_path)
    issue(tmp_path, "a")
    with pytest.raises(ConfigError, match="never overwritten"):
        issue(tmp_path, "a")
    with pytest.raises(ConfigError, match="node id"):
        issue(tmp_path, "../etc/passwd")
    assert main(["certs", "issue", str(tmp_path / "none"), "b"]) == 2
    assert "no swarm CA" in capsys.readouterr().err
    # a bad id among several: nothing is written, not even the good ones before it
    assert main(["certs", "issue", str(tmp_path), "c", SWARM_NAME]) == 2
    assert "reserved" in capsys.readouterr().err and not (tmp_path / "c.pem").exists()
    assert main(["certs", "init", str(tmp_path / "new"), "d", "x/y"]) == 2 and not (tmp_path / "new").exists()
