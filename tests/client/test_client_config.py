"""petreloss.conf parsing, cluster selection and URL errors; `import petrel` stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clientconf import write_conf

from petrel.client import Client, ConfigError, InvalidUrl, load_cluster, parse_url


def test_parse_url() -> None:
    assert parse_url("s3://b/k/e y") == (None, "b", "k/e y")
    assert parse_url("cluster1:s3://b/k") == ("cluster1", "b", "k")
    assert parse_url("s3://b") == (None, "b", "")
    assert parse_url("s3://b/") == (None, "b", "")
    assert parse_url("s3://") == (None, "", "")
    for bad in ("b/k", "http://b/k", "a:b:s3://b/k", "s3:/b/k", ""):
        with pytest.raises(InvalidUrl):
            parse_url(bad)


def test_default_and_named_cluster(tmp_path: Path, gateway, bucket: str) -> None:  # type: ignore[no-untyped-def]
    conf = write_conf(tmp_path / "petreloss.conf", gateway.endpoint)
    client = Client(conf)
    client.put(f"s3://{bucket}/k", b"default")
    assert client.get(f"other:s3://{bucket}/k") == b"default"
    assert client.get(f"local:s3://{bucket}/k") == b"default"
    with pytest.raises(ConfigError, match="nope"):
        client.get(f"nope:s3://{bucket}/k")


def test_no_default_cluster(tmp_path: Path, gateway, bucket: str) -> None:  # type: ignore[no-untyped-def]
    client = Client(write_conf(tmp_path / "c.conf", gateway.endpoint, default=None))
    with pytest.raises(ConfigError, match="default_cluster"):
        client.get(f"s3://{bucket}/k")
    assert client.get(f"other:s3://{bucket}/k") is None


def test_conf_from_home(home: Path, gateway, bucket: str) -> None:  # type: ignore[no-untyped-def]
    write_conf(home / "petreloss.conf", gateway.endpoint)
    client = Client()
    assert client.config.path == str(home / "petreloss.conf")
    assert client.put(f"s3://{bucket}/h", b"home") == 4


def test_config_errors(tmp_path: Path, home: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        Client()
    with pytest.raises(ConfigError, match="not found"):
        Client(tmp_path / "absent.conf")
    broken = tmp_path / "broken.conf"
    broken.write_text("no section header\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        Client(broken)
    partial = tmp_path / "partial.conf"
    partial.write_text("[c]\nhost_base = http://127.0.0.1:1\naccess_key = a\n")
    with pytest.raises(ConfigError, match="secret_key"):
        Client(partial)
    bad_host = tmp_path / "bad_host.conf"
    bad_host.write_text("[DEFAULT]\ndefault_cluster = c\n"
                        "[c]\nhost_base = ftp://x/y\naccess_key = a\nsecret_key = s\n")
    with pytest.raises(ConfigError, match="host_base"):
        Client(bad_host).get("s3://b/k")
    assert load_cluster(bad_host).host_base == "ftp://x/y"


def test_secrets_with_percent_and_inherited_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[DEFAULT]\ndefault_cluster = a\naccess_key = AK\nsecret_key = s%cr3t\n"
                    "[a]\nhost_base = 127.0.0.1:9000\n")
    cluster = load_cluster(conf)
    assert (cluster.name, cluster.access_key, cluster.secret_key) == ("a", "AK", "s%cr3t")
    assert "s%cr3t" not in repr(cluster)


def test_bad_constructor_arguments(tmp_path: Path, gateway) -> None:  # type: ignore[no-untyped-def]
    conf = write_conf(tmp_path / "c.conf", gateway.endpoint)
    with pytest.raises(ValueError, match="batch_size"):
        Client(conf, batch_size=1001)
    with pytest.raises(ValueError, match="batch_threads"):
        Client(conf, batch_threads=0)


def test_import_petrel_stays_light() -> None:
    code = ("import sys, json, petrel; "
            "print(json.dumps([m for m in ('urllib3', 'petrel.client', 'petrel_client') "
            "if m in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert json.loads(result.stdout) == []
    code = "import petrel, petrel_client.client as c; assert c.Client is petrel.Client"
    subprocess.run([sys.executable, "-c", code], timeout=60, check=True)
