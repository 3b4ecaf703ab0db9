"""Connection settings: environment parsing and validation (no broker needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker import env
from broker.errors import ConfigurationError
from broker.kafka.settings import KafkaSettings


def test_no_bootstrap_means_no_external_cluster() -> None:
    assert KafkaSettings.from_env({}) is None


def test_plaintext_from_env() -> None:
    s = KafkaSettings.from_env({"CBX_BOOTSTRAP_SERVERS": "k1:9092,k2:9092"})
    assert s is not None
    assert s.aiokafka_kwargs()["bootstrap_servers"] == "k1:9092,k2:9092"
    assert s.aiokafka_kwargs()["security_protocol"] == "PLAINTEXT"
    assert "sasl_plain_password" not in s.aiokafka_kwargs()


def test_sasl_settings_reach_aiokafka() -> None:
    s = KafkaSettings.from_env(
        {
            "CBX_BOOTSTRAP_SERVERS": "k1:9093",
            "CBX_SECURITY_PROTOCOL": "sasl_plaintext",
            "CBX_SASL_MECHANISM": "SCRAM-SHA-512",
            "CBX_SASL_USERNAME": "agency-e10000016",
            "CBX_SASL_PASSWORD": "pw",
        }
    )
    assert s is not None
    kw = s.aiokafka_kwargs()
    assert kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kw["sasl_plain_username"] == "agency-e10000016"
    assert "pw" not in repr(s)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"CBX_SECURITY_PROTOCOL": "TLS"}, "security_protocol"),
        ({"CBX_SECURITY_PROTOCOL": "SASL_SSL", "CBX_SASL_MECHANISM": "GSSAPI"}, "sasl_mechanism"),
        (
            {"CBX_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CBX_SASL_MECHANISM": "SCRAM-SHA-512"},
            "CBX_SASL_USERNAME",
        ),
    ],
)
def test_bad_settings_name_the_problem(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        KafkaSettings.from_env({"CBX_BOOTSTRAP_SERVERS": "k:1", **env})


ROOT = Path(__file__).resolve().parent.parent


def test_every_cbx_variable_is_read_in_broker_env_only() -> None:
    """No module but ``broker/env.py`` touches ``os.environ`` or ``os.getenv`` for settings."""
    offenders = []
    for pkg in ("broker", "connectors", "cbx"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ROOT / "broker" / "env.py":
                continue
            text = path.read_text()
            if re.search(r"os\.environ|os\.getenv|getenv\(", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_the_readme_lists_every_variable_and_no_other() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Environment") : readme.index("## Tests and benchmarks")]
    listed = re.findall(r"^\| `(CBX_[A-Z_]+)` \|", table, flags=re.M)
    assert listed == list(env.VARIABLES)


def test_an_undeclared_variable_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match="not a declared"):
        env.get("CBX_NO_SUCH_THING")
    assert env.get("CBX_HOME", env={"CBX_HOME": "  "}) is None
    assert env.get("CBX_LOG_LEVEL", "INFO", env={}) == "INFO"
    assert env.raw("CBX_SASL_PASSWORD", env={"CBX_SASL_PASSWORD": " pw "}) == " pw "


def test_secrets_come_from_mounted_files(tmp_path: Path) -> None:
    """A password or passphrase may be a file (a Docker or Kubernetes secret), never only an
    environment literal; the variable itself still wins."""
    secret = tmp_path / "password"
    secret.write_text(" s3cret with spaces \n")
    given = {
        "CBX_BOOTSTRAP_SERVERS": "broker:9093",
        "CBX_SECURITY_PROTOCOL": "SASL_SSL",
        "CBX_SASL_MECHANISM": "SCRAM-SHA-512",
        "CBX_SASL_USERNAME": "la-e10000016",
        "CBX_SASL_PASSWORD_FILE": str(secret),
    }
    settings = KafkaSettings.from_env(given)
    assert settings is not None
    assert settings.sasl_password == " s3cret with spaces "
    assert env.secret("CBX_SASL_PASSWORD", {**given, "CBX_SASL_PASSWORD": "set"}) == "set"
    assert env.secret("CBX_KEYSTORE_PASSPHRASE", {}) is None
    missing = {**given, "CBX_SASL_PASSWORD_FILE": str(tmp_path / "nowhere")}
    with pytest.raises(OSError, match=r"CBX_SASL_PASSWORD_FILE names .*nowhere"):
        KafkaSettings.from_env(missing)


def test_a_secret_file_that_is_no_secret_is_refused_clearly(tmp_path: Path) -> None:
    """/dev/zero, a huge file or binary bytes named as a secret file: a clear refusal naming the
    variable, never a read without end."""
    from broker.admin import provision

    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * 5_000_000)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00password")
    for path, why in [
        ("/dev/zero", "over 4096 bytes"),
        (huge, "over 4096 bytes"),
        (binary, "UTF-8"),
    ]:
        given = {"CBX_KEYSTORE_PASSPHRASE_FILE": str(path)}
        with pytest.raises(OSError, match=f"CBX_KEYSTORE_PASSPHRASE_FILE names .*{why}"):
            env.secret("CBX_KEYSTORE_PASSPHRASE", given)
        with pytest.raises(ConfigurationError, match=why):
            provision.read_password(Path(path))
    short = tmp_path / "short.password"
    short.write_text("tooshort\n")
    with pytest.raises(ConfigurationError, match="fewer than 16"):
        provision.read_password(short)


def test_a_huge_agency_id_is_refused_without_being_echoed_whole() -> None:
    from broker.kafka.topics import check_agency_id

    with pytest.raises(ConfigurationError) as refused:
        check_agency_id("la-" + "e" * 5000)
    assert "(5003 chars)" in str(refused.value)
    assert len(str(refused.value)) < 300
