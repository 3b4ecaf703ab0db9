"""A service's or agency's own identity on the exchange: its keystore and its directory entry."""

from __future__ import annotations

from broker import directory as directory_mod
from broker import env
from broker.crypto import keys as keystore
from broker.kafka.settings import KafkaSettings


def passphrase_from_env() -> bytes | None:
    value = env.get("CBX_KEYSTORE_PASSPHRASE")
    return value.encode() if value else None


async def ensure_identity(
    settings: KafkaSettings, agency: str, name: str, kind: str, publish: bool = True
) -> keystore.AgencyKeys:
    """Load the keystore of ``agency`` (created on first use); publish its directory entry."""
    path = keystore.keystore_path(agency)
    secret = passphrase_from_env()
    if path.exists():
        keys = keystore.load(path, secret)
    else:
        keys = keystore.AgencyKeys.new(agency)
        keystore.save(keys, path, secret)
    if publish:
        entry = directory_mod.AgencyEntry.from_keys(keys, name, kind)
        await directory_mod.publish(settings, entry)
    return keys
