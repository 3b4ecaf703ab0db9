"""Sign-in through a council's or force's OpenID Connect identity provider.

Authlib runs the authorisation-code flow (state, nonce, the ID token's signature against the
provider's published keys, issuer, audience and expiry). The console maps one claim of the ID token
to its roles: ``roles:cbx.operator=operator,cbx.viewer=viewer`` gives the operator role to anyone
whose ``roles`` claim holds ``cbx.operator``. Someone the provider knows but the mapping does not is
refused, and the refusal audited like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.errors import ConfigurationError

from .auth import Role


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str
    claim: str = "roles"
    roles: dict[str, Role] = field(
        default_factory=lambda: {"cbx.operator": Role.OPERATOR, "cbx.viewer": Role.VIEWER}
    )
    label: str = "your organisation's account"

    @classmethod
    def parse(
        cls,
        issuer: str,
        client_id: str,
        secret_file: Path,
        roles: str | None = None,
        label: str | None = None,
    ) -> OidcSettings:
        if not issuer.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ConfigurationError(f"--oidc-issuer: use https (not {issuer[:60]!r})")
        try:
            secret = secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigurationError(f"--oidc-client-secret-file: {exc.strerror}") from None
        claim, mapping = "roles", {"cbx.operator": Role.OPERATOR, "cbx.viewer": Role.VIEWER}
        if roles:
            claim, _, pairs = roles.partition(":")
            mapping = {}
            for pair in pairs.split(","):
                value, _, role = pair.partition("=")
                try:
                    mapping[value.strip()] = Role(role.strip())
                except ValueError:
                    raise ConfigurationError(
                        f"--oidc-roles: {pair!r} is not VALUE=viewer or VALUE=operator"
                    ) from None
            if not claim or not mapping:
                raise ConfigurationError("--oidc-roles: CLAIM:VALUE=ROLE[,VALUE=ROLE]")
        return cls(issuer.rstrip("/"), client_id, secret, claim, mapping, label or cls.label)

    def role_of(self, claims: dict[str, Any]) -> Role | None:
        """The highest role the claims give (operator over viewer), or None."""
        raw = claims.get(self.claim)
        values = {raw} if isinstance(raw, str) else set(raw or [])
        granted = {r for v, r in self.roles.items() if v in values}
        if Role.OPERATOR in granted:
            return Role.OPERATOR
        return Role.VIEWER if Role.VIEWER in granted else None


def name_of(claims: dict[str, Any]) -> str:
    for key in ("preferred_username", "email", "sub"):
        v = claims.get(key)
        if isinstance(v, str) and v:
            return v[:200]
    return "(unnamed)"


def client(settings: OidcSettings) -> Any:
    from authlib.integrations.starlette_client import OAuth

    oauth = OAuth()
    oauth.register(
        "idp",
        server_metadata_url=f"{settings.issuer}/.well-known/openid-configuration",
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        client_kwargs={"scope": "openid profile email"},
    )
    return oauth.idp
