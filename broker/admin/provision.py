"""Administration: the topics, principals, ACLs and directory entries an exchange is made of.

Everything here runs as the cluster's administrator (the embedded broker's super user, or the
principal ``CBX_SASL_USERNAME`` names on an external cluster). Services and connectors never create
topics or grant themselves anything: they connect as themselves and find what was set up for them.
On a cluster without SASL (a developer's plain broker) principals and ACLs are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from broker import directory as directory_mod
from broker import env, model
from broker.admin.identity import own_keys
from broker.crypto import keys as keystore
from broker.errors import ConfigurationError
from broker.kafka import clients as kafka
from broker.kafka import principals, topics
from broker.kafka.acls import AccessControl, Grant, grants
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.policy.profiles import agency_topics, directory_kind
from broker.policy.reference import reference

log = get_logger("provision")

SERVICES = {
    model.ROUTER: ("router", "cbx router"),
    model.TRACKER: ("tracker", "cbx delivery tracker"),
    model.OPERATOR: ("operator", "cbx operators"),
}
#: Services that sign and open nothing, so hold no keys: operators see metadata only.
KEYLESS = frozenset({model.OPERATOR})


def secured(settings: KafkaSettings) -> bool:
    return settings.security_protocol.startswith("SASL")


@dataclass(frozen=True)
class Provisioned:
    principal: str
    role: str
    grants: list[Grant]
    topics: list[str]


async def setup(admin: KafkaSettings, passwords: Path | None = None) -> list[Provisioned]:
    """The shared topics, and the router, tracker and operator principals with their keys.
    ``passwords``: a folder of ``<principal>.password`` files (the deployment's secrets) to
    set instead of generated passwords."""
    await kafka.ensure_topics(admin, admin.topics.core())
    done = []
    for principal, (role, name) in SERVICES.items():
        done.append(await _service(admin, principal, role, name, password_in(passwords, principal)))
    return done


def password_in(folder: Path | None, principal: str) -> str | None:
    """The password of ``principal`` in a folder of ``<principal>.password`` files, if any."""
    if folder is None:
        return None
    path = folder / f"{principal}.password"
    return read_password(path) if path.exists() else None


def read_password(path: Path) -> str:
    """A password from a secret file (its final newline is not part of it)."""
    try:
        password = env.read_secret_file(str(path), str(path))
    except OSError as exc:
        raise ConfigurationError(str(exc)) from None
    if len(password) < 16:
        raise ConfigurationError(f"{path}: a password of fewer than 16 characters is refused")
    return password


async def upgrade_topics(admin: KafkaSettings) -> list[str]:
    """Give every agency's existing topics what this version's layout adds (the urgent lane of
    its outbound and inbox topics), moving no case's records. Returns the topics changed."""
    specs = [*admin.topics.core()]
    for agency in await provisioned_agencies(admin):
        specs += agency_topics(admin.topics, agency)
    return await kafka.ensure_topics(admin, specs)


async def provisioned_agencies(admin: KafkaSettings) -> list[str]:
    """Every agency with an outbound topic (cbx's own services left out), sorted."""
    client = kafka.admin(admin)
    await client.start()
    try:
        names = await client.list_topics()
    finally:
        await client.close()
    prefix = admin.topics.outbound_prefix
    return sorted(
        n.removeprefix(prefix)
        for n in names
        if n.startswith(prefix)
        and topics.Topics.is_agency_id(n.removeprefix(prefix))
        and not n.removeprefix(prefix).startswith(model.SERVICE_PREFIX)  # core() has those
    )


#: How long provisioning waits for the brokers to accept a principal's new password.
CREDENTIALS_WAIT_S = 30.0


async def credentials_accepted(
    settings: KafkaSettings, within_s: float = CREDENTIALS_WAIT_S
) -> None:
    """Return once the cluster accepts ``settings``' principal and password.

    The controller has the new SCRAM credentials when it answers, but each broker applies them
    from the metadata log a moment later (longer on a loaded machine), and a connector started
    straight after ``cbx agency add`` was refused as having invalid credentials. So provisioning
    returns only when a connection with them succeeds to every broker the cluster lists: on a
    cluster, the bootstrap broker taking them says nothing of the others.
    """
    deadline = asyncio.get_running_loop().time() + within_s
    tries = 0
    with _refusals_expected():
        while True:
            tries += 1
            client = kafka.admin(settings)
            try:
                await client.start()
                nodes = client._client.cluster.brokers()
                refused = [b.nodeId for b in nodes if not await client._client.ready(b.nodeId)]
                if not refused:
                    log.info("credentials_accepted", principal=settings.sasl_username, tries=tries)
                    return
                raise KafkaConnectionError(f"brokers {refused} refused the connection")
            except KafkaConnectionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise ConfigurationError(
                        f"the cluster did not accept the new credentials of "
                        f"{settings.sasl_username} within {within_s:.0f} s"
                    ) from None
                await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(Exception):
                    await client.close()


class _Refusals(logging.Filter):
    """Drops aiokafka's report of a refused login: while provisioning waits for a new password
    to reach every broker, refusals are what it expects, and an operator reading
    ``ERROR ... SaslAuthenticationFailed`` would think provisioning had failed. How long it waited
    is logged instead, and a password never accepted is still an error, with its principal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(isinstance(a, SaslAuthenticationFailed) for a in record.args or ())


@contextlib.contextmanager
def _refusals_expected() -> Iterator[None]:
    quiet = _Refusals()
    logger = logging.getLogger("aiokafka")  # the client logs as the package
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


async def _service(
    admin: KafkaSettings, principal: str, role: str, name: str, password: str | None = None
) -> Provisioned:
    entries = grants(role, admin.topic_prefix)
    if secured(admin):
        # A service's password survives being set up again (say for another namespace), so its
        # running processes keep their connections.
        AccessControl(admin).provision(principal, role, keep_password=True, password=password)
    if principal in KEYLESS:
        entry = directory_mod.AgencyEntry(agency=principal, name=name, kind="SERVICE")
    else:
        entry = directory_mod.AgencyEntry.from_keys(own_keys(principal), name, "SERVICE")
    await directory_mod.publish(admin, entry)
    return Provisioned(principal, role, entries, [])


async def ensure_service(admin: KafkaSettings, principal: str, *, grant: bool = False) -> None:
    """Set up one service principal if its credentials are not there yet (development).

    ``grant`` sets up its ACLs in ``admin``'s namespace even when the principal exists (for an
    operator looking into another namespace, such as a scenario's).
    """
    if (
        grant
        or principals.load(principal) is None
        or (principal not in KEYLESS and not keystore.keystore_path(principal).exists())
    ):
        await kafka.ensure_topics(admin, admin.topics.core())
        role, name = SERVICES[principal]
        await _service(admin, principal, role, name)


async def add_agency(admin: KafkaSettings, agency: str, password: str | None = None) -> Provisioned:
    """An agency's principal and credentials, its two topics, and the ACLs of its role."""
    topics.check_agency_id(agency)
    own = agency_topics(admin.topics, agency)
    await kafka.ensure_topics(admin, [*admin.topics.core(), *own])
    entries = grants("agency", admin.topic_prefix, agency)
    if secured(admin):
        AccessControl(admin).provision(agency, "agency", agency, password=password)
        await credentials_accepted(principals.settings_for(admin, agency))
    log.info("agency_added", agency=agency, acls=len(entries))
    return Provisioned(agency, "agency", entries, [s.name for s in own])


async def remove_agency(admin: KafkaSettings, agency: str) -> None:
    """Revoke everything: ACLs and credentials (refused at once), and mark it revoked."""
    if secured(admin):
        AccessControl(admin).deprovision(agency)
    current = await directory_mod.load(admin)
    entry = current.get(agency)
    if entry is not None:
        from dataclasses import replace

        await directory_mod.publish(admin, replace(entry, revoked=True))
    log.info("agency_removed", agency=agency)


async def publish_agency_keys(admin: KafkaSettings, keys: keystore.AgencyKeys) -> None:
    """Publish an agency's public keys to the directory (as administrator)."""
    agency = keys.agency
    kind = directory_kind(agency)
    entry = directory_mod.AgencyEntry.from_keys(keys, reference().name_of(agency), kind)
    await directory_mod.publish(admin, entry)
