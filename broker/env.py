"""Every ``CBX_*`` environment variable, read here and nowhere else.

Each variable is declared once with what it does; the README's table lists the same names (a test
keeps them equal). Modules ask :func:`get` for a declared name, so a misspelt or undocumented
variable is a programming error, not a silently ignored setting.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import overload

#: Name -> what it does. The README's "Environment" table lists these.
VARIABLES: dict[str, str] = {
    "CBX_HOME": "local state: broker data, credentials, keystores (~/.local/share/cbx)",
    "CBX_CACHE_DIR": "where downloaded Kafka jars are cached (~/.cache/cbx)",
    "CBX_SCHEMAS_DIR": "the schema and policy folder (the shipped schemas/)",
    "CBX_BOOTSTRAP_SERVERS": "an existing cluster, host:port[,...]; unset: the embedded broker",
    "CBX_SECURITY_PROTOCOL": "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (PLAINTEXT)",
    "CBX_SASL_MECHANISM": "SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN",
    "CBX_SASL_USERNAME": "the principal to connect as",
    "CBX_SASL_PASSWORD": "its password",
    "CBX_SASL_PASSWORD_FILE": "a file holding the password instead (a mounted secret)",
    "CBX_SSL_CAFILE": "CA bundle that signs the brokers' certificates",
    "CBX_SSL_CERTFILE": "client certificate, for mutual TLS",
    "CBX_SSL_KEYFILE": "its private key",
    "CBX_TOPIC_PREFIX": "topic namespace (cbx)",
    "CBX_KAFKA_HEAP": "heap of the embedded broker's JVM (768m)",
    "CBX_KAFKA_STARTUP_TIMEOUT": "seconds to wait for the embedded broker to start (120)",
    "CBX_KEYSTORE_PASSPHRASE": "passphrase that encrypts agency and service keystores",
    "CBX_KEYSTORE_PASSPHRASE_FILE": "a file holding the passphrase instead (a mounted secret)",
    "CBX_WEBHOOK_URL": "default webhook of a connector whose profile delivers by webhook",
    "CBX_DEADLINES": "a YAML file of acknowledgement windows instead of the shipped deadlines.yaml",
    "CBX_LOG_FORMAT": "json or console (json when stderr is not a terminal)",
    "CBX_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR (INFO)",
    "CBX_CONSOLE_DATABASE_URL": "the console's view: sqlite:///PATH (under $CBX_HOME/console)",
    "CBX_CONSOLE_ACCOUNTS": "the console's accounts file ($CBX_HOME/console/accounts.json)",
    "CBX_ENDED_CASE_DAYS": "days an ended placement's case stays in the registry (90)",
    "CBX_REGISTRY_SWEEP_S": "seconds between the router's sweeps for ended cases to remove (3600)",
    "CBX_ROUTER_INSTANCE": "this router instance's name, which ends its transactional id (the "
    "host's name): the same across its restarts, different from every other instance's",
    "CBX_ROUTER_GROUP_PROTOCOL": "the router group's protocol: consumer (the broker assigns, "
    "KIP-848) or classic",
    "CBX_ROUTER_KAFKA_DEBUG": "librdkafka debug contexts for the router's group consumer, "
    "such as cgrp,protocol: every request it makes and why, on stderr (none)",
}


@overload
def get(name: str, default: str, env: Mapping[str, str] | None = None) -> str: ...
@overload
def get(name: str, default: None = None, env: Mapping[str, str] | None = None) -> str | None: ...
def get(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The value of a declared variable; empty counts as unset."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a declared cbx environment variable (broker/env.py)")
    value = (os.environ if env is None else env).get(name, "").strip()
    return value or default


def raw(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of a declared variable exactly as set (a password may be empty or padded)."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not a declared cbx environment variable (broker/env.py)")
    return (os.environ if env is None else env).get(name)


def secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """A secret from ``NAME``, or else from the file ``NAME_FILE`` names (a Docker or Kubernetes
    secret mounted as a file; its final newline is not part of it)."""
    value = raw(name, env)
    if value is not None and value != "":
        return value
    path = get(f"{name}_FILE", None, env)
    if path is None:
        return value
    return read_secret_file(path, f"{name}_FILE names {path}")


#: A secret file longer than this is refused (a password, a passphrase: never megabytes).
MAX_SECRET_BYTES = 4096


def read_secret_file(path: str, what: str) -> str:
    """The text of a secret file, without its final newline. ``what`` starts every error: a
    file that cannot be read, is over ``MAX_SECRET_BYTES`` (``/dev/zero`` included) or is not
    UTF-8 is refused, saying which."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise OSError(f"{what}, which cannot be read: {exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise OSError(f"{what}, which is over {MAX_SECRET_BYTES} bytes: not a secret file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise OSError(f"{what}, which is not UTF-8 text") from None
    return text.removesuffix("\n").removesuffix("\r")
