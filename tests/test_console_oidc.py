"""Sign-in through an OpenID Connect provider: a small provider of our own on this machine (real
HTTP, RS256 ID tokens, published keys), and the console's authorisation-code flow through Authlib.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import served
from console_harness import Played, audit_topic
from fastapi import FastAPI, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse
from joserfc import jwt
from joserfc.jwk import RSAKey

from broker.console.oidc import OidcSettings
from broker.console.service import running

pytestmark = pytest.mark.kafka
CLIENT_ID = "cbx-console"
SECRET = "client secret of the console"


class Provider:
    """An identity provider that signs in whoever ``user`` says, with ``claims``."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
        self.codes: dict[str, dict[str, Any]] = {}
        self.claims: dict[str, Any] = {}
        self.issuer = ""
        self.forge_signature = False

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        async def discovery() -> dict[str, Any]:
            return {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
            }

        @app.get("/jwks")
        async def jwks() -> dict[str, Any]:
            return {"keys": [self.key.as_dict(private=False)]}

        @app.get("/authorize")
        async def authorize(request: Request) -> RedirectResponse:
            q = request.query_params
            assert q["client_id"] == CLIENT_ID
            assert q["response_type"] == "code"
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"nonce": q.get("nonce"), "redirect_uri": q["redirect_uri"]}
            target = (
                q["redirect_uri"]
                + "?"
                + urllib.parse.urlencode({"code": code, "state": q["state"]})
            )
            return RedirectResponse(target, status_code=302)

        @app.post("/token")
        async def token(
            request: Request,
            code: str = Form(),
            grant_type: str = Form(),
            redirect_uri: str = Form(),
        ) -> JSONResponse:
            form = await request.form()
            secret = form.get("client_secret")
            if secret is None:  # client_secret_basic
                import base64

                basic = request.headers.get("authorization", "").removeprefix("Basic ")
                secret = base64.b64decode(basic).decode().partition(":")[2]
            if secret != SECRET or grant_type != "authorization_code":
                return JSONResponse({"error": "invalid_client"}, status_code=401)
            issued = self.codes.pop(code, None)
            if issued is None or issued["redirect_uri"] != redirect_uri:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            now = int(time.time())
            claims = {
                "iss": self.issuer,
                "aud": CLIENT_ID,
                "iat": now,
                "exp": now + 300,
                "nonce": issued["nonce"],
                **self.claims,
            }
            key = (
                RSAKey.generate_key(2048, parameters={"kid": "k1"})
                if self.forge_signature
                else self.key
            )
            id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)
            return JSONResponse(
                {
                    "access_token": secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": id_token,
                }
            )

        return app


async def test_operators_sign_in_through_their_identity_provider(
    console_case: Played, tmp_path: Path
) -> None:
    provider = Provider()
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")

    @asynccontextmanager
    async def idp() -> AsyncIterator[Any]:
        yield provider.app()

    def drive() -> list[tuple[int, str]]:
        outcomes = []
        with served(idp) as issuer:
            provider.issuer = issuer
            oidc = OidcSettings.parse(
                issuer, CLIENT_ID, secret_file, "groups:cbx-ops=operator,cbx-desk=viewer", "Kent"
            )

            @asynccontextmanager
            async def console() -> AsyncIterator[Any]:
                async with running(
                    console_case.operator,
                    tmp_path / "view.sqlite",
                    console_case.accounts,
                    oidc=oidc,
                ) as r:
                    yield r.app

            with served(console) as base:
                for claims, forge in (
                    (
                        {"sub": "u1", "preferred_username": "dana@kent", "groups": ["cbx-ops"]},
                        False,
                    ),
                    (
                        {"sub": "u2", "preferred_username": "eli@kent", "groups": ["cbx-desk"]},
                        False,
                    ),
                    (
                        {"sub": "u3", "preferred_username": "finn@kent", "groups": ["finance"]},
                        False,
                    ),
                    ({"sub": "u4", "preferred_username": "gail@kent", "groups": ["cbx-ops"]}, True),
                ):
                    provider.claims = claims
                    provider.forge_signature = forge
                    with httpx.Client(base_url=base, follow_redirects=True) as browser:
                        page = browser.get("/sign-in")
                        assert 'id="sign-in-oidc"' in page.text
                        assert "Sign in with Kent" in page.text
                        answer = browser.get("/sign-in/oidc?next=/escalations")
                        who = browser.get("/api/board")
                        outcomes.append((answer.status_code, str(answer.url), who.status_code))
        return outcomes  # type: ignore[return-value]

    outcomes = await asyncio.to_thread(drive)
    (dana, eli, finn, gail) = outcomes
    assert dana[0] == 200
    assert dana[1].endswith("/escalations")
    assert dana[2] == 200
    assert eli[0] == 200
    assert eli[2] == 200
    assert finn[0] == 403  # known to the provider, no console role
    assert finn[2] == 401
    assert gail[0] == 403  # an ID token not signed by the provider's published key
    assert gail[2] == 401
    actions = [
        (a.actor, a.action, a.outcome, a.actor_role, a.target, a.reason)
        for a in await audit_topic(console_case.admin)
        if a.target == "oidc"
    ]
    assert ("dana@kent", "sign-in", "DONE", "operator", "oidc", None) in actions
    assert ("eli@kent", "sign-in", "DONE", "viewer", "oidc", None) in actions
    assert (
        "finn@kent",
        "sign-in",
        "REFUSED",
        None,
        "oidc",
        "no console role in the 'groups' claim",
    ) in actions
    refused = [a for a in actions if a[0] == "(unknown)" and a[2] == "REFUSED"]
    assert refused
    assert refused[-1][5].startswith("identity provider:")
