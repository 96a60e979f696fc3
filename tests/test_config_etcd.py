"""[etcd]: protocol = etcd's section, and the errors that name its keys."""

import pytest

from electiond import config

BASE = """
[cluster]
name = demo
protocol = etcd
members = n1=1, n2=2, n3=3

[node]
name = n1
"""


def load(tmp_path, text):
    path = tmp_path / "electiond.conf"
    path.write_text(text)
    return config.load(str(path))


def test_defaults(tmp_path):
    cfg = load(tmp_path, BASE + "[etcd]\nendpoints = http://10.0.0.1:2379, http://10.0.0.2:2379\n")
    assert cfg.protocol == "etcd"
    assert cfg.etcd.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert cfg.etcd.prefix == "/electiond/demo/"
    assert cfg.etcd.lease_ttl_s == 5 and cfg.settings.etcd_lease_ttl_s == 5
    assert cfg.settings.lease_guard_s == 0.5 == cfg.etcd.lease_guard_s
    assert cfg.etcd.user is None


@pytest.mark.parametrize("section, key, message", [
    ("", "endpoints", "is required"),
    ("endpoints = 10.0.0.1:2379\n", "endpoints", "bad endpoint"),
    ("endpoints = http://a:2379\nlease_ttl = 1s\n", "lease_ttl", "at least"),
    ("endpoints = http://a:2379\nlease_ttl = 2500ms\n", "lease_ttl", "whole seconds"),
    ("endpoints = http://a:2379\nlease_guard = 3s\n", "lease_guard", "half"),
    ("endpoints = http://a:2379\nprefix = electiond\n", "prefix", "start and end"),
    ("endpoints = http://a:2379\nuser = u\n", "password", "go together"),
    ("endpoints = http://a:2379\nca_file = /nonexistent/ca.pem\n", "ca_file", "cannot read"),
    ("endpoints = http://a:2379\nlease = 5s\n", "lease", "unknown key"),
])
def test_errors_name_the_key(tmp_path, section, key, message):
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, BASE + "[etcd]\n" + section)
    assert f"[etcd] {key}" in str(err.value) and message in str(err.value)


def test_tls_and_password_file(tmp_path):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = load(tmp_path, BASE + f"""[etcd]
endpoints = https://e1:2379
ca_file = {tmp_path / 'ca.pem'}
cert_file = {tmp_path / 'cert.pem'}
key_file = {tmp_path / 'key.pem'}
user = electiond
password_file = {tmp_path / 'pw'}
""")
    assert cfg.etcd.password == "s3cret" and cfg.etcd.user == "electiond"
    assert cfg.etcd.cert_file.endswith("cert.pem")
    with pytest.raises(config.ConfigError, match=r"\[etcd\] endpoints: TLS files"):
        load(tmp_path, BASE + f"[etcd]\nendpoints = http://e1:2379\nca_file = {tmp_path / 'ca.pem'}\n")


def test_a_node_outside_members_is_refused(tmp_path):
    with pytest.raises(config.ConfigError, match=r"\[node\] name"):
        load(tmp_path, BASE.replace("name = n1", "name = n9") + "[etcd]\nendpoints = http://a:2379\n")


def test_etcd_section_ignored_for_other_protocols(tmp_path):
    cfg = load(tmp_path, BASE.replace("protocol = etcd", "protocol = bully") + "[etcd]\nendpoints = http://a:2379\n")
    assert cfg.etcd is None and any("[etcd] is ignored" in w for w in cfg.warnings)
