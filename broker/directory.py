"""The agency directory: who is on the exchange and their public keys, kept in ``cbx.directory``.

``cbx.directory`` is compacted and keyed by agency id; each value is a single-object encoded
``cbx.DirectoryEntry``. Every service builds its :class:`Directory` by reading the topic; nobody
holds a second copy of the truth.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from broker.crypto.keys import AgencyKeys, KeyPair
from broker.errors import SerializationError, SignatureError
from broker.kafka import clients as kafka
from broker.kafka.settings import KafkaSettings
from broker.logging import get_logger
from broker.schema import codec
from broker.schema.catalogue import Catalogue
from broker.schema.store import SchemaStore

log = get_logger("directory")
SCHEMA = "DirectoryEntry"


@dataclass(frozen=True)
class PublicKeyInfo:
    key_id: str
    public_key: bytes
    not_before: dt.datetime
    not_after: dt.datetime

    def valid_at(self, at: dt.datetime) -> bool:
        return self.not_before <= at <= self.not_after


@dataclass(frozen=True)
class AgencyEntry:
    """An agency's directory record."""

    agency: str
    name: str
    kind: str
    areas: tuple[str, ...] = ()
    encryption_keys: tuple[PublicKeyInfo, ...] = ()
    signing_keys: tuple[PublicKeyInfo, ...] = ()
    updated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    revoked: bool = False

    @classmethod
    def from_keys(
        cls, keys: AgencyKeys, name: str, kind: str, areas: tuple[str, ...] = ()
    ) -> AgencyEntry:
        def info(p: KeyPair) -> PublicKeyInfo:
            return PublicKeyInfo(p.key_id, p.public_bytes, p.not_before, p.not_after)

        return cls(
            agency=keys.agency,
            name=name,
            kind=kind,
            areas=areas,
            encryption_keys=tuple(info(p) for p in keys.of("enc")),
            signing_keys=tuple(info(p) for p in keys.of("sig")),
        )

    def to_record(self) -> dict[str, Any]:
        def key(k: PublicKeyInfo) -> dict[str, Any]:
            return {
                "key_id": k.key_id,
                "public_key": k.public_key,
                "not_before": k.not_before,
                "not_after": k.not_after,
            }

        return {
            "agency": self.agency,
            "name": self.name,
            "kind": self.kind,
            "areas": list(self.areas),
            "encryption_keys": [key(k) for k in self.encryption_keys],
            "signing_keys": [key(k) for k in self.signing_keys],
            "updated_at": self.updated_at,
            "revoked": self.revoked,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> AgencyEntry:
        def key(k: dict[str, Any]) -> PublicKeyInfo:
            return PublicKeyInfo(k["key_id"], k["public_key"], k["not_before"], k["not_after"])

        return cls(
            agency=r["agency"],
            name=r["name"],
            kind=r["kind"],
            areas=tuple(r["areas"]),
            encryption_keys=tuple(key(k) for k in r["encryption_keys"]),
            signing_keys=tuple(key(k) for k in r["signing_keys"]),
            updated_at=r["updated_at"],
            revoked=r["revoked"],
        )


def _newest_valid(keys: tuple[PublicKeyInfo, ...], at: dt.datetime) -> PublicKeyInfo | None:
    valid = [k for k in keys if k.valid_at(at)]
    return max(valid, key=lambda k: k.not_before) if valid else None


class Directory:
    """Agencies by id, with the key lookups that sealing and verification need."""

    def __init__(self, entries: list[AgencyEntry] | None = None) -> None:
        self._entries: dict[str, AgencyEntry] = {}
        #: agency -> (answer, until): the newest valid encryption key now, which stays the answer
        #: until one of the agency's keys starts or ends, or its entry changes.
        self._current_enc: dict[str, tuple[PublicKeyInfo | None, dt.datetime]] = {}
        for e in entries or []:
            self.put(e)

    def put(self, entry: AgencyEntry) -> None:
        self._entries[entry.agency] = entry
        self._current_enc.pop(entry.agency, None)

    def remove(self, agency: str) -> None:
        self._entries.pop(agency, None)
        self._current_enc.pop(agency, None)

    def __contains__(self, agency: str) -> bool:
        e = self._entries.get(agency)
        return e is not None and not e.revoked

    def get(self, agency: str) -> AgencyEntry | None:
        return self._entries.get(agency)

    def agencies(self) -> list[AgencyEntry]:
        return [self._entries[a] for a in sorted(self._entries)]

    def encryption_key(self, agency: str, at: dt.datetime | None = None) -> PublicKeyInfo | None:
        """The newest valid X25519 key of a live agency, or None."""
        e = self._entries.get(agency)
        if e is None or e.revoked:
            return None
        if at is not None:
            return _newest_valid(e.encryption_keys, at)
        # The sealer asks for every recipient of every message: the answer is kept until the
        # next moment any of the agency's keys starts or ends.
        now = dt.datetime.now(dt.UTC)
        hit = self._current_enc.get(agency)
        if hit is not None and now < hit[1]:
            return hit[0]
        answer = _newest_valid(e.encryption_keys, now)
        edges = [k.not_before for k in e.encryption_keys if k.not_before > now]
        edges += [k.not_after for k in e.encryption_keys if k.not_after >= now]
        self._current_enc[agency] = (
            answer,
            min(edges, default=dt.datetime.max.replace(tzinfo=dt.UTC)),
        )
        return answer

    def signing_key(self, agency: str, key_id: str, at: dt.datetime | None = None) -> bytes:
        """The raw Ed25519 public key ``key_id`` of ``agency``, if valid at ``at``."""
        e = self._entries.get(agency)
        if e is None:
            raise SignatureError(f"signer {agency} is not in the directory")
        if e.revoked:
            raise SignatureError(f"signer {agency} has been removed from the exchange")
        at = at or dt.datetime.now(dt.UTC)
        for k in e.signing_keys:
            if k.key_id == key_id:
                if not k.valid_at(at):
                    raise SignatureError(f"signing key {key_id} of {agency} is not valid now")
                return k.public_key
        raise SignatureError(f"signing key {key_id} is not a key of {agency} in the directory")


class DirectoryCodec:
    """Encode and decode DirectoryEntry records (single-object Avro)."""

    def __init__(self, catalogue: Catalogue | None = None) -> None:
        cat = catalogue or Catalogue.load()
        self._version = cat.latest(SCHEMA)
        self._store = SchemaStore(cat)

    def encode(self, entry: AgencyEntry) -> bytes:
        return codec.encode(self._version.parsed, self._version.fingerprint, entry.to_record())

    def decode(self, data: bytes) -> AgencyEntry:
        return AgencyEntry.from_record(
            codec.decode(data, self._store.writer_for, self._version.parsed)
        )


async def publish(
    settings: KafkaSettings, entry: AgencyEntry, dcodec: DirectoryCodec | None = None
) -> None:
    """Write ``entry`` to ``cbx.directory`` (compacted; the newest record per agency wins)."""
    await kafka.ensure_topics(
        settings, [s for s in settings.topics.core() if s.name == settings.topics.directory]
    )
    dcodec = dcodec or DirectoryCodec()
    producer = kafka.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topics.directory, dcodec.encode(entry), key=entry.agency.encode()
        )
    finally:
        await producer.stop()


async def load(
    settings: KafkaSettings, dcodec: DirectoryCodec | None = None, timeout_s: float = 10.0
) -> Directory:
    """Read ``cbx.directory`` to its current end."""
    dcodec = dcodec or DirectoryCodec()
    directory = Directory()
    await kafka.read_to_end(
        settings, settings.topics.directory, lambda r: apply(directory, dcodec, r), timeout_s
    )
    return directory


def apply(directory: Directory, dcodec: DirectoryCodec, record: Any) -> None:
    """Apply one ``cbx.directory`` record (a tombstone removes the agency)."""
    if record.value is None:
        directory.remove(record.key.decode())
        return
    try:
        directory.put(dcodec.decode(record.value))
    except SerializationError as exc:
        log.warning("directory_entry_rejected", offset=record.offset, error=str(exc))
