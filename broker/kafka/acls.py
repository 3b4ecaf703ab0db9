"""Access control on the wire: SCRAM credentials and Kafka ACLs per principal.

aiokafka has no ACL or SCRAM administration, so this module uses confluent-kafka's AdminClient
(librdkafka), a maintained client that implements CreateAcls, DeleteAcls, DescribeAcls and
AlterUserScramCredentials. The ACL set of each role is data: ``schemas/policy/acls.yaml``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from broker.errors import CbxError, ConfigurationError
from broker.kafka import principals
from broker.kafka.settings import KafkaSettings
from broker.paths import schemas_dir

_RESOURCES = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional_id": ResourceType.TRANSACTIONAL_ID,
    "cluster": ResourceType.BROKER,
}
_PATTERNS = {"literal": ResourcePatternType.LITERAL, "prefixed": ResourcePatternType.PREFIXED}
SCRAM_ITERATIONS = 8192


class AccessError(CbxError):
    """Administering credentials or ACLs failed."""

    stage = "access"


@dataclass(frozen=True)
class Grant:
    """One ACL entry: allow ``principal`` ``operation`` on a resource."""

    resource: str
    name: str
    pattern: str
    operation: str

    def binding(self, principal: str) -> AclBinding:
        return AclBinding(
            _RESOURCES[self.resource],
            self.name,
            _PATTERNS[self.pattern],
            f"User:{principal}",
            "*",
            AclOperation[self.operation],
            AclPermissionType.ALLOW,
        )

    def as_json(self) -> dict[str, str]:
        return {
            "resource": self.resource,
            "name": self.name,
            "pattern": self.pattern,
            "operation": self.operation,
        }


@cache
def _roles(path: Path | None = None) -> dict[str, list[dict[str, Any]]]:
    path = path or schemas_dir() / "policy" / "acls.yaml"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"ACL policy {path} is unreadable: {exc}") from exc
    roles: dict[str, list[dict[str, Any]]] = doc.get("roles") or {}
    return roles


def grants(role: str, prefix: str, agency: str = "") -> list[Grant]:
    """The ACL entries of ``role`` in namespace ``prefix`` (for ``agency``, if an agency)."""
    try:
        entries = _roles()[role]
    except KeyError:
        raise ConfigurationError(f"no ACL role {role!r} in schemas/policy/acls.yaml") from None
    out = []
    for e in entries:
        only = e.get("agencies_starting")  # an entry for some kinds of agency only
        if only is not None and not agency.startswith(tuple(only)):
            continue
        name = str(e["name"]).format(prefix=prefix, agency=agency)
        for op in e["operations"]:
            out.append(Grant(e["resource"], name, e.get("pattern", "literal"), op))
    return out


def _client(settings: KafkaSettings) -> AdminClient:
    return AdminClient(settings.librdkafka_config())


def _wait(futures: dict[Any, Any], what: str) -> None:
    for key, fut in futures.items():
        try:
            fut.result(timeout=30)
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.code() == KafkaError.SECURITY_DISABLED:
                raise AccessError(
                    f"{what}: the cluster has no authorizer, so ACLs cannot be set"
                ) from exc
            raise AccessError(f"{what} failed for {key}: {err.str()}") from exc


def _everything_of(principal: str) -> AclBindingFilter:
    """A filter matching every ACL of ``principal``."""
    return AclBindingFilter(
        ResourceType.ANY,
        None,
        ResourcePatternType.ANY,
        f"User:{principal}",
        None,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


class AccessControl:
    """Principals and ACLs on one cluster, administered as its super user."""

    def __init__(self, admin_settings: KafkaSettings) -> None:
        self.settings = admin_settings
        self.admin = _client(admin_settings)

    def set_password(self, principal: str, password: str) -> None:
        upsert = UserScramCredentialUpsertion(
            principal,
            ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS),
            password.encode(),
        )
        _wait(self.admin.alter_user_scram_credentials([upsert]), "creating SCRAM credentials")

    def delete_password(self, principal: str) -> None:
        deletion = UserScramCredentialDeletion(principal, ScramMechanism.SCRAM_SHA_512)
        try:
            _wait(self.admin.alter_user_scram_credentials([deletion]), "deleting credentials")
        except AccessError as exc:
            if "RESOURCE_NOT_FOUND" not in str(exc) and "not found" not in str(exc).lower():
                raise

    def grant(self, principal: str, entries: list[Grant]) -> None:
        _wait(self.admin.create_acls([g.binding(principal) for g in entries]), "creating ACLs")

    def revoke_all(self, principal: str) -> None:
        _wait(self.admin.delete_acls([_everything_of(principal)]), "deleting ACLs")

    def describe(self, principal: str) -> list[Grant]:
        try:
            found = self.admin.describe_acls(_everything_of(principal)).result(timeout=30)
        except KafkaException as exc:
            raise AccessError(f"describing ACLs of {principal}: {exc.args[0].str()}") from exc
        names = {v: k for k, v in _RESOURCES.items()}
        return sorted(
            (
                Grant(
                    names.get(b.restype, str(b.restype)),
                    b.name,
                    "prefixed"
                    if b.resource_pattern_type == ResourcePatternType.PREFIXED
                    else "literal",
                    b.operation.name,
                )
                for b in found
            ),
            key=lambda g: (g.resource, g.name, g.operation),
        )

    def provision(
        self,
        principal: str,
        role: str,
        agency: str = "",
        *,
        keep_password: bool = False,
        password: str | None = None,
    ) -> str:
        """Create (or reset) ``principal``'s password, grant its role, keep the credentials.

        ``keep_password`` sets the stored password again instead of a new one, so processes
        already connected as the principal (another console, a command) are not locked out.
        ``password`` is one the deployment chose (from its secret store).
        """
        stored = principals.load(principal) if keep_password else None
        password = password or stored or secrets.token_urlsafe(24)
        self.set_password(principal, password)
        self.grant(principal, grants(role, self.settings.topic_prefix, agency))
        principals.save(principal, password)
        return password

    def deprovision(self, principal: str) -> None:
        """Revoke every ACL of ``principal`` and delete its credentials: refused at once."""
        self.revoke_all(principal)
        self.delete_password(principal)
        principals.delete(principal)
