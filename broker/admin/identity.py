"""A service's or agency's own identity on the exchange: its keystore and its directory entry."""

from __future__ import annotations

from broker import directory as directory_mod
from broker import env
from broker.crypto import keys as keystore
from broker.errors import KeystoreError
from broker.kafka.settings import KafkaSettings


def passphrase_from_env() -> bytes | None:
    value = env.secret("CBX_KEYSTORE_PASSPHRASE")
    return value.encode() if value else None


def passphrase_for_new_keystore() -> bytes | None:
    """The passphrase a new keystore is encrypted with.

    Against a cluster named by ``CBX_BOOTSTRAP_SERVERS`` (any real deployment) a keystore is
    never written in clear: without ``CBX_KEYSTORE_PASSPHRASE`` this is a KeystoreError saying so.
    With the embedded development broker (demos, tests) the passphrase is optional.
    """
    secret = passphrase_from_env()
    if secret is None and KafkaSettings.from_env() is not None:
        raise KeystoreError(
            "CBX_KEYSTORE_PASSPHRASE is not set: keystores for a cluster named by "
            "CBX_BOOTSTRAP_SERVERS are encrypted. Set it (or pass --passphrase-file) and run again"
        )
    return secret


def own_keys(agency: str) -> keystore.AgencyKeys:
    """The keystore of ``agency`` or a service, created (and saved) on first use."""
    path = keystore.keystore_path(agency)
    if path.exists():
        return keystore.load(path, passphrase_from_env())
    keys = keystore.AgencyKeys.new(agency)
    keystore.save(keys, path, passphrase_for_new_keystore())
    return keys


async def ensure_identity(
    settings: KafkaSettings, agency: str, name: str, kind: str, publish: bool = True
) -> keystore.AgencyKeys:
    """Load the keystore of ``agency`` (created on first use); publish its directory entry."""
    keys = own_keys(agency)
    if publish:
        entry = directory_mod.AgencyEntry.from_keys(keys, name, kind)
        await directory_mod.publish(settings, entry)
    return keys
