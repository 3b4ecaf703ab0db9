"""The one error hierarchy of cbx.

Every error says what was wrong, where, and what to do. Retry logic reads the ``retriable`` flag
rather than listing classes; the dead-letter code reads ``stage`` and the class name.
"""

from __future__ import annotations


class CbxError(Exception):
    """Base of every error cbx raises on purpose."""

    #: Trying the same operation again may succeed (a broker restart, a timeout).
    retriable: bool = False
    #: Pipeline stage named in dead-letter headers.
    stage: str = "cbx"


class ConfigurationError(CbxError):
    """Settings are missing or contradictory; fix the environment and run again."""

    stage = "config"


class EmbeddedKafkaError(CbxError):
    """The embedded development broker could not be installed, started or stopped."""

    stage = "embedded-kafka"

    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


class JavaNotFoundError(EmbeddedKafkaError):
    """No Java 17+ runtime for the embedded broker."""


class KafkaUnavailableError(CbxError):
    """The Kafka cluster did not answer in time."""

    retriable = True
    stage = "kafka"


class SchemaError(CbxError):
    """A schema file is missing, malformed, or breaks compatibility."""

    stage = "schema"


class SerializationError(CbxError):
    """Bytes could not be encoded or decoded as the schema says."""

    stage = "codec"


class UnknownSchemaError(SerializationError):
    """A message names a writer schema fingerprint nobody has published."""

    retriable = True

    def __init__(self, fingerprint: bytes) -> None:
        super().__init__(
            f"unknown writer schema fingerprint {fingerprint.hex()}: publish it to cbx.schemas "
            "(cbx schemas publish) and replay"
        )
        self.fingerprint = fingerprint


class ProtectionError(CbxError):
    """Sealing, unsealing, signing or verifying failed; the message must not be delivered."""

    stage = "protection"


class SignatureError(ProtectionError):
    """The signature is missing, made with an unknown or expired key, or does not verify."""


class KeystoreError(CbxError):
    """An agency keystore is missing, unreadable, or the passphrase is wrong."""

    stage = "keystore"


class PolicyError(CbxError):
    """A message breaks the sharing policy or the routing rules.

    At the agency edge every policy refusal answers 422 unless a subclass says otherwise: the
    request is well formed but cannot be routed as it stands.
    """

    stage = "policy"
    #: The HTTP status an ingest request refused for this reason gets.
    http_status: int = 422


class NotPermittedError(PolicyError):
    """The agency may not send this kind of message at all (its profile or role forbids it)."""

    http_status = 403


class UnknownCaseError(PolicyError):
    """The case is not in the placement registry (yet): the connector cannot choose recipients."""


class AmbiguousCaseError(PolicyError):
    """A bare case reference names cases of more than one placing authority."""

    http_status = 409


class CaseOwnerError(PolicyError):
    """A council tried to register a placement under another council's case."""

    http_status = 409


class NoRecipientError(PolicyError):
    """A message would reach no one but its sender, and its rule does not allow that."""


class UnknownRecipientError(PolicyError):
    """A message names a recipient that is not on the exchange."""


class AccessDeniedError(CbxError):
    """Kafka refused the principal access to a topic, group or transactional id (ACLs)."""

    stage = "access"

    def __init__(self, principal: str, kind: str, name: str) -> None:
        super().__init__(
            f"Kafka refused principal User:{principal} access to {kind} {name}: "
            "not in its ACLs (see cbx agency show)"
        )
        self.principal = principal
        self.kind = kind
        self.name = name


class AuthenticationFailedError(CbxError):
    """Kafka did not accept the client's credentials."""

    stage = "access"
