"""Only an agency's own systems can speak through its connector: tokens, scopes, origins, hosts,
and mutual TLS on a non-loopback address. On the real broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from agencies import SHARING, body_of
from cli import cbx
from exchange import exchange
from pki import TestPki
from test_http_ingest import SHARING_JSON
from test_router import ALL, CASE, KENT, LANCS, PROVIDER

from benchmarks.samples import PAYLOADS
from broker.kafka.settings import KafkaSettings
from broker.policy.routing import Rules
from cbx.cli.connector_cmd import Edge
from connectors.ingest.auth import Scope, TokenStore
from connectors.ingest.http import create_app
from connectors.ingest.idempotency import IdempotencyStore

pytestmark = pytest.mark.kafka

PLACEMENT = {
    "case_ref": CASE,
    "sharing": SHARING_JSON,
    "event": {**PAYLOADS["PlacementNotified"], "host_authority": LANCS, "provider": PROVIDER},
}
PATH = "/v1/events/PlacementNotified"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_tokens_scopes_origins_and_hosts(kafka_ns: KafkaSettings, tmp_path: Path) -> None:
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        tokens = TokenStore(tmp_path / "tokens.json")
        submit, _ = tokens.add([Scope.SUBMIT], label="case system")
        reader, _ = tokens.add([Scope.READ])
        everything, rec_all = tokens.add(list(Scope))
        expired, _ = tokens.add([Scope.SUBMIT], expires_in=dt.timedelta(seconds=-1))
        app = create_app(
            ex.connectors[KENT],
            IdempotencyStore(tmp_path / "sent.jsonl"),
            tokens=tokens,
            allowed_hosts=["127.0.0.1", "localhost"],
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as h:
            anonymous = await h.post(PATH, json=PLACEMENT)
            assert anonymous.status_code == 401
            assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
            assert (
                await h.post(PATH, json=PLACEMENT, headers=bearer("nonsense"))
            ).status_code == 401
            forged = submit[:-4] + "AAAA"
            assert (await h.post(PATH, json=PLACEMENT, headers=bearer(forged))).status_code == 401
            assert (await h.post(PATH, json=PLACEMENT, headers=bearer(expired))).status_code == 401
            wrong_scope = await h.post(PATH, json=PLACEMENT, headers=bearer(reader))
            assert wrong_scope.status_code == 403
            assert "may not submit" in wrong_scope.json()["error"]
            # A page in a browser on this machine: refused however it dresses the request.
            for headers in (
                {"Origin": "https://evil.example", **bearer(submit)},
                {"Origin": "null", **bearer(submit)},
            ):
                r = await h.post(PATH, json=PLACEMENT, headers=headers)
                assert r.status_code == 403
                assert "cross-origin" in r.json()["error"]
            plain = await h.post(
                PATH,
                content=json.dumps(PLACEMENT),
                headers={"Content-Type": "text/plain", **bearer(submit)},
            )
            assert plain.status_code == 415
            rebound = await h.post(
                PATH, json=PLACEMENT, headers={"Host": "attacker.example", **bearer(submit)}
            )
            assert rebound.status_code == 400
            ok = await h.post(PATH, json=PLACEMENT, headers=bearer(submit))
            assert ok.status_code == 202, ok.text
            mid = ok.json()["message_id"]
            assert (await h.get(f"/v1/messages/{mid}", headers=bearer(submit))).status_code == 403
            assert (await h.get(f"/v1/messages/{mid}", headers=bearer(reader))).status_code == 200
            # Acknowledging needs its own scope: a reader cannot silence an escalation.
            ack = await h.post(f"/v1/messages/{mid}/ack", headers=bearer(reader))
            assert ack.status_code == 403
            tokens.revoke(rec_all.token_id)
            revoked = await h.get(f"/v1/messages/{mid}", headers=bearer(everything))
            assert revoked.status_code == 401
            assert "revoked" in revoked.json()["error"]
            doc = (await h.get("/openapi.json")).json()
            assert doc["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"
            assert doc["security"] == [{"apiToken": []}]
            responses = doc["paths"][PATH]["post"]["responses"]
            assert {"401", "403", "413", "415", "422"} <= set(responses)
            assert (await h.get("/healthz")).status_code == 200
        assert "cbx_" not in tokens.path.read_text()  # only digests are kept
        assert oct(tokens.path.stat().st_mode & 0o777) == "0o600"


def test_token_commands_show_the_secret_once_and_revoke(tmp_path: Path) -> None:
    made = cbx(
        None,
        tmp_path,
        "connector",
        "token",
        "add",
        "--agency",
        KENT,
        "--scope",
        "submit",
        "--label",
        "case system",
        "--expires",
        "30d",
        "--json",
    )
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert token["token"].startswith(f"cbx_{token['token_id']}_")
    assert token["scopes"] == ["submit"]
    listed = cbx(None, tmp_path, "connector", "token", "list", "--agency", KENT, "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["state"] == "active"
    assert "token" not in row
    secret = token["token"].split("_", 2)[2]  # cbx_<id>_<secret>; the secret may hold "_"
    assert secret not in listed.stdout
    gone = cbx(None, tmp_path, "connector", "token", "revoke", "--agency", KENT, row["token_id"])
    assert gone.returncode == 0, gone.stderr
    again = cbx(None, tmp_path, "connector", "token", "list", "--agency", KENT, "--json")
    assert json.loads(again.stdout)[0]["state"] == "revoked"


def test_anonymous_access_is_refused_off_loopback(tmp_path: Path) -> None:
    done = cbx(
        None,
        tmp_path,
        "connector",
        "run",
        "--agency",
        KENT,
        "--host",
        "192.0.2.2",
        "--insecure-no-auth",
    )
    assert done.returncode != 0
    assert "--insecure-no-auth" in done.stdout + done.stderr
    assert "refused" in done.stdout + done.stderr


def non_loopback_address() -> str:
    """An address of this machine other than loopback (else 127.0.0.1)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.255", 9))  # no packet is sent: this only picks a route
            address: str = s.getsockname()[0]
            if not address.startswith("127."):
                return address
    except OSError:
        pass
    return "127.0.0.1"


async def test_mutual_tls_on_a_non_loopback_address(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    address = non_loopback_address()
    pki = TestPki(tmp_path / "pki")
    server_cert, server_key = pki.issue("connector", address=address)
    client_cert, client_key = pki.issue("kent-case-system", client=True)
    stranger = TestPki(tmp_path / "other", "someone else's CA")
    other_cert, other_key = stranger.issue("stranger", client=True)
    with socket.socket() as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
    edge = Edge(
        host=address,
        port=port,
        tls_cert=server_cert,
        tls_key=server_key,
        client_ca=pki.ca_file,
        allowed_hosts=(address,),
    )
    edge.check()
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        tokens = TokenStore(tmp_path / "tokens.json")
        token, _ = tokens.add([Scope.SUBMIT])
        app = create_app(
            ex.connectors[KENT],
            IdempotencyStore(tmp_path / "sent.jsonl"),
            tokens=tokens,
            allowed_hosts=edge.hosts(),
        )
        server = uvicorn.Server(uvicorn.Config(app, **edge.uvicorn()))
        task = asyncio.create_task(server.serve())
        try:
            for _ in range(200):
                if server.started:
                    break
                await asyncio.sleep(0.05)
            url = f"https://{address}:{port}"

            def context(cert: Any = None) -> ssl.SSLContext:
                ctx = ssl.create_default_context(cafile=str(pki.ca_file))
                if cert is not None:
                    ctx.load_cert_chain(*cert)
                return ctx

            async with httpx.AsyncClient(verify=context((client_cert, client_key))) as h:
                ok = await h.post(f"{url}{PATH}", json=PLACEMENT, headers=bearer(token))
                assert ok.status_code == 202, ok.text
                assert ok.json()["recipients"]
            for cert in (None, (other_cert, other_key)):
                async with httpx.AsyncClient(verify=context(cert)) as h:
                    with pytest.raises(
                        (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
                    ):
                        await h.post(f"{url}{PATH}", json=PLACEMENT, headers=bearer(token))
        finally:
            server.should_exit = True
            await task


async def test_a_case_reference_cannot_be_squatted(kafka_ns: KafkaSettings, tmp_path: Path) -> None:
    """Hertfordshire registers Kent's reference first. It gets a case of its own; Kent's placement
    is accepted as Kent's; a report naming the bare reference is refused as ambiguous (not sent to
    the squatter), and the report naming Kent's case reaches Kent's parties alone."""
    herts = "la-e10000015"
    herts_parties = set(Rules.load().placement_parties(herts, LANCS).values())
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(sorted({*ALL, *herts_parties}))
        apps = {
            a: create_app(ex.connectors[a], IdempotencyStore(tmp_path / f"{a}.jsonl"))
            for a in (KENT, herts, "pf-e23000003")
        }

        def client(agency: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=apps[agency]), base_url="http://c"
            )

        async with client(herts) as h:
            # Naming Kent's case outright is refused at once, not accepted and then rejected.
            taken = await h.post(PATH, json={**PLACEMENT, "case_ref": f"{KENT}/{CASE}"})
            assert taken.status_code == 409, taken.text
            assert "belongs to la-e10000016" in taken.text
            squat = await h.post(PATH, json=PLACEMENT)
            assert squat.status_code == 202, squat.text
            assert squat.json()["case_ref"] == f"{herts}/{CASE}"
            for agency in herts_parties - {herts}:
                await ex.wait_registered(agency, f"{herts}/{CASE}")
        async with client(KENT) as h:
            placed = await h.post(PATH, json=PLACEMENT)
            assert placed.status_code == 202, placed.text
            assert placed.json()["case_ref"] == f"{KENT}/{CASE}"
            assert "la-e10000017" in {r["agency"] for r in placed.json()["recipients"]}
        for a in ("pf-e23000003",):

            async def both(agency: str = a) -> bool:
                await ex.connectors[agency].sync()
                return len(ex.connectors[agency].registry.find(CASE)) == 2

            await ex.wait_for(both, what="both cases in the registry")
        report = {
            "case_ref": CASE,
            "urgency": "IMMEDIATE",
            "sharing": SHARING_JSON,
            "event": PAYLOADS["ChildMissingReported"],
        }
        async with client("pf-e23000003") as h:
            ambiguous = await h.post("/v1/events/ChildMissingReported", json=report)
            assert ambiguous.status_code == 409, ambiguous.text
            assert KENT in ambiguous.text
            assert herts in ambiguous.text
            named = await h.post(
                "/v1/events/ChildMissingReported", json={**report, "case_ref": f"{KENT}/{CASE}"}
            )
            assert named.status_code == 202, named.text
            to = {r["agency"] for r in named.json()["recipients"]}
            # Kent's case: its parties, the home among them (told of the police's missing report)
            assert to == {KENT, "pf-e23000032", "la-e10000017", PROVIDER}
            assert herts not in to
        # Each agency sees only the cases it is a party to: Hertfordshire not Kent's.
        await ex.connectors[herts].sync()
        assert [c.case_ref for c in ex.connectors[herts].registry.find(CASE)] == [f"{herts}/{CASE}"]
        # Nor can Hertfordshire end Kent's placement.
        async with client(herts) as h:
            ended = await h.post(
                "/v1/events/PlacementEnded",
                json={
                    "case_ref": f"{KENT}/{CASE}",
                    "sharing": SHARING_JSON,
                    "event": {
                        "placement_id": PAYLOADS["PlacementNotified"]["placement_id"],
                        "end_date": "2026-05-01",
                        "reason": "MOVED",
                        "planned": True,
                    },
                },
            )
            assert ended.status_code in (403, 422), ended.text


async def test_a_sender_sees_whom_a_case_reaches_and_an_operator_too(
    kafka_ns: KafkaSettings, tmp_path: Path
) -> None:
    async with exchange(kafka_ns, tmp_path) as ex:
        await ex.agencies(ALL)
        placed = await ex.connectors[KENT].send(
            "PlacementNotified",
            body_of("PlacementNotified", host_authority=LANCS, provider=PROVIDER),
            case_ref=CASE,
            sharing=SHARING,
        )
        for a in (KENT, "pf-e23000003"):
            await ex.wait_registered(a, CASE)
        tokens = TokenStore(tmp_path / "tokens.json")
        reader, _ = tokens.add([Scope.READ])
        submit_only, _ = tokens.add([Scope.SUBMIT])
        app = create_app(
            ex.connectors["pf-e23000003"], IdempotencyStore(tmp_path / "s.jsonl"), tokens=tokens
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as h:
            assert (
                await h.get(f"/v1/cases/{CASE}", headers=bearer(submit_only))
            ).status_code == 403
            seen = await h.get(f"/v1/cases/{CASE}", headers=bearer(reader))
            assert seen.status_code == 200, seen.text
            view = seen.json()
            assert view["case_ref"] == placed.header.case_ref == f"{KENT}/{CASE}"
            roles = {p["role"]: (p["agency"], p["name"]) for p in view["parties"]}
            assert roles["HOST_FORCE"] == ("pf-e23000003", "Lancashire")
            assert roles["PLACING_AUTHORITY"][0] == KENT
            assert "Whitcombe" not in seen.text  # parties only, never content
            qualified = await h.get(f"/v1/cases/{KENT}/{CASE}", headers=bearer(reader))
            assert qualified.json() == view
            nothing = await h.get("/v1/cases/NO-SUCH-CASE", headers=bearer(reader))
            assert nothing.status_code == 404
        shown = cbx(kafka_ns, tmp_path, "case", "show", CASE, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == view
