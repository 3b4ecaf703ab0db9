"""Deployment artefacts, checked offline: the Strimzi resources against Strimzi's own CRD schemas
(kept in deploy/schemas/strimzi/) and against the ACLs the access tests prove; the Kubernetes
manifests against the Kubernetes schemas (kubernetes-validate ships them); the Compose file
against the Compose Specification's schema (deploy/schemas/); the image's Dockerfile for what a
hardened image needs; and the package the image installs, for every file it reads at run time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator

from broker.admin import provision, strimzi
from broker.kafka import embedded as local_kafka
from broker.kafka.acls import grants
from broker.kafka.settings import BROKER_GROUP_SETTINGS
from broker.kafka.topics import Topics
from broker.policy.profiles import agency_topics
from broker.policy.reference import reference

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = "1.31"
#: One agency of every kind, and two of the commonest.
AGENCIES = [
    "la-e10000016",
    "la-e10000017",
    "pf-e23000032",
    "icb-e54000032",
    "cp-sc482913",
    "gp-a81001",
    "sch-100000",
    "iro-e10000016",
    "rhi-1234567",
]
#: Variables that would hold a secret itself (a *_FILE variable names a file instead).
SECRET_NAME = re.compile(r"(PASSWORD|PASSPHRASE|SECRET|TOKEN|KEY)$")


def strimzi_schema(kind: str) -> Draft7Validator:
    schema = json.loads((DEPLOY / "schemas" / "strimzi" / f"{kind}.json").read_text())
    return Draft7Validator(schema)


def errors(validator: Draft7Validator, doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_strimzi_resources_are_valid_against_strimzi_schemas() -> None:
    docs = strimzi.resources("cbx", AGENCIES)
    kinds = {d["kind"] for d in docs}
    assert kinds == {"Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"}
    validators = {k: strimzi_schema(k) for k in kinds}
    for doc in docs:
        assert doc["apiVersion"] == "kafka.strimzi.io/v1"
        assert not errors(validators[doc["kind"]], doc), (
            doc["metadata"]["name"],
            errors(validators[doc["kind"]], doc),
        )
        # Resource names are DNS labels, each unique in its kind.
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names))


def test_every_broker_definition_times_the_routers_group_as_the_embedded_broker_does(
    tmp_path: Path,
) -> None:
    """The router's group uses the consumer protocol, whose heartbeat the brokers set: at Kafka's
    default (5 s) a partition changing hands waits that long. The Strimzi cluster, the Compose
    broker and the embedded broker all carry the exchange's settings."""
    assert BROKER_GROUP_SETTINGS["group.consumer.heartbeat.interval.ms"] <= 250
    cluster = next(d for d in strimzi.resources("cbx", AGENCIES) if d["kind"] == "Kafka")
    config = cluster["spec"]["kafka"]["config"]
    start = (DEPLOY / "compose" / "kafka-start.sh").read_text().splitlines()
    embedded = dict(
        line.split("=", 1)
        for line in local_kafka._server_properties(tmp_path, 1, 2, 3, "x").splitlines()
    )
    for name, value in BROKER_GROUP_SETTINGS.items():
        assert config[name] == value, name
        assert f"{name}={value}" in start, name
        assert embedded[name] == str(value), name


def test_strimzi_users_hold_exactly_the_acls_the_access_tests_prove() -> None:
    """Read back from the KafkaUsers, each principal's ACLs are the entries `cbx agency add`
    grants (schemas/policy/acls.yaml), no more and no fewer."""
    back = {"topic": "topic", "group": "group", "transactionalId": "transactional_id"}
    patterns = {"literal": "literal", "prefix": "prefixed"}
    users = {
        d["spec"]["userName"]: d
        for d in strimzi.resources("cbx", AGENCIES)
        if d["kind"] == "KafkaUser"
    }
    roles = {p: role for p, (role, _) in provision.SERVICES.items()} | dict.fromkeys(
        AGENCIES, "agency"
    )
    assert set(users) == set(roles)
    for principal, role in roles.items():
        acls = users[principal]["spec"]["authorization"]["acls"]
        got = {
            (
                back[r["resource"]["type"]],
                r["resource"]["name"],
                patterns[r["resource"]["patternType"]],
                op.upper(),
            )
            for r in acls
            for op in r["operations"]
        }
        want = {
            (g.resource, g.name, g.pattern, g.operation)
            for g in grants(role, "cbx", principal if role == "agency" else "")
        }
        assert got == want, principal
        assert all(r["type"] == "allow" for r in acls)
        assert users[principal]["spec"]["authentication"] == {"type": "scram-sha-512"}


def test_strimzi_topics_are_the_exchanges_topics_with_replication_three() -> None:
    t = Topics("cbx")
    docs = [d for d in strimzi.resources("cbx", AGENCIES) if d["kind"] == "KafkaTopic"]
    want = {s.name: s for s in t.core()} | {
        s.name: s for a in AGENCIES for s in agency_topics(t, a)
    }
    got = {d["spec"]["topicName"]: d["spec"] for d in docs}
    assert set(got) == set(want)
    for name, spec in got.items():
        assert spec["partitions"] == want[name].partitions, name
        assert spec["replicas"] == 3
        assert spec["config"]["min.insync.replicas"] == 2
        for key, value in want[name].config.items():
            assert spec["config"][key] == value
    # The urgent lane is there: outbound and inbox have one partition more than status.
    assert got[t.outbound("la-e10000016")]["partitions"] == 4
    assert got[t.status("la-e10000016")]["partitions"] == 3
    # A children's home has the partitions of its kind: one, and no lane.
    assert got[t.outbound("cp-sc482913")]["partitions"] == 1
    assert got[t.inbox("cp-sc482913")]["partitions"] == 1
    assert got[t.status("cp-sc482913")]["partitions"] == 1


def test_cbx_deploy_strimzi_writes_them(tmp_path: Path) -> None:
    councils = sorted(reference().councils)[:3]
    listing = tmp_path / "agencies.txt"
    listing.write_text("# the first councils\n" + "\n".join(councils) + "\n")
    out = tmp_path / "strimzi.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "cbx.cli", "deploy", "strimzi", "--agencies-file", str(listing),
         "--agency", "pf-e23000032", "--out", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    users = {d["spec"]["userName"] for d in docs if d["kind"] == "KafkaUser"}
    assert users >= {*councils, "pf-e23000032", "svc-router", "svc-tracker"}
    bad = subprocess.run(
        [sys.executable, "-m", "cbx.cli", "deploy", "strimzi", "--agency", "Kent Council"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "Kent Council" in bad.stderr + bad.stdout


def manifests() -> list[dict[str, Any]]:
    out = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def test_kubernetes_manifests_are_valid_kubernetes() -> None:
    docs = manifests()
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "PersistentVolumeClaim"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_kubernetes_pods_are_hardened_and_read_secrets_from_files() -> None:
    deployments = [d for d in manifests() if d["kind"] == "Deployment"]
    assert {d["metadata"]["name"] for d in deployments} >= {"cbx-router", "cbx-tracker"}
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["runAsUser"] != 0
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            for e in c["env"]:
                if SECRET_NAME.search(e["name"]):
                    pytest.fail(f"{d['metadata']['name']}: {e['name']} is a literal secret")
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["CBX_SASL_PASSWORD_FILE"].startswith("/run/secrets/")
            assert env["CBX_SECURITY_PROTOCOL"] == "SASL_SSL"


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def test_compose_file_is_valid_compose() -> None:
    schema = json.loads((DEPLOY / "schemas" / "compose-spec.json").read_text())
    validator = Draft7Validator(schema)
    assert not errors(validator, compose())


def test_compose_runs_the_whole_exchange_hardened_with_secrets_from_files() -> None:
    doc = compose()
    services = doc["services"]
    assert {"kafka-1", "kafka-2", "kafka-3", "router", "tracker", "console"} <= set(services)
    assert sum(1 for s in services if s.startswith("connector-")) >= 4
    for name, secret in doc["secrets"].items():
        assert set(secret) == {"file"}, name
        assert secret["file"].startswith("compose/secrets/"), name
    for name, svc in services.items():
        assert svc["read_only"] is True, name
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                pytest.fail(f"{name}: {key}={value!r} is an environment literal")
        if name.startswith("kafka-"):
            continue
        assert svc["user"] == "10001:10001", name
        assert svc["cap_drop"] == ["ALL"], name
        env = svc["environment"]
        secret = env["CBX_SASL_PASSWORD_FILE"].removeprefix("/run/secrets/")
        assert secret in [s if isinstance(s, str) else s["source"] for s in svc["secrets"]], name
    # Every principal's password the set-up provisions is one of the secrets.
    setup = services["cbx-setup"]
    targets = [s["target"] for s in setup["secrets"] if isinstance(s, dict)]
    for agency in setup["environment"]["CBX_AGENCIES"].split():
        assert f"/run/secrets/passwords/{agency}.password" in targets
    for script in ("kafka-start.sh", "setup.sh", "make-secrets.sh"):
        text = (DEPLOY / "compose" / script).read_text()
        assert text.startswith("#!/bin/"), script
        assert "set -eu" in text, script
    start = (DEPLOY / "compose" / "kafka-start.sh").read_text()
    assert "min.insync.replicas=2" in start
    assert "transaction.state.log.replication.factor=3" in start


def stages(dockerfile: str) -> list[list[str]]:
    out: list[list[str]] = []
    for line in dockerfile.replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


def test_the_image_is_multi_stage_non_root_and_without_compilers() -> None:
    dockerfile = (DEPLOY / "image" / "Dockerfile").read_text()
    built = stages(dockerfile)
    assert len(built) >= 2
    final = built[-1]
    assert final[0].startswith("FROM python:3.11-slim")
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users
    assert users[-1].split(":")[0] not in ("0", "root")
    text = "\n".join(final)
    for compiler in ("build-essential", "gcc", "apt-get install"):
        assert compiler not in text, compiler
    assert "COPY --from=build /opt/cbx /opt/cbx" in text
    assert "CBX_SCHEMAS_DIR=/opt/cbx/schemas" in text
    assert 'ENTRYPOINT ["cbx"]' in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored
    assert ".git" in ignored


def test_the_installed_package_holds_everything_it_reads(tmp_path: Path) -> None:
    """What the image's `pip install .` puts in place runs from there, with the schemas where
    the image copies them: its page templates and static files are in the package."""
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    probe = (
        "import broker, connectors.gateway, broker.console, sys\n"
        "from pathlib import Path\n"
        "assert str(Path(broker.__file__).parent).startswith(sys.argv[1]), broker.__file__\n"
        "from broker.schema.catalogue import Catalogue\n"
        "from broker.policy.routing import Rules\n"
        "Catalogue.load(); Rules.load()\n"
        "g = Path(connectors.gateway.__file__).parent / 'templates' / 'chronology.html'\n"
        "c = Path(broker.console.__file__).parent / 'templates'\n"
        "assert g.is_file() and any(c.glob('*.html')), (g, c)\n"
        "print('ok')\n"
    )
    env = {"PYTHONPATH": str(target), "CBX_SCHEMAS_DIR": str(ROOT / "schemas"), "PATH": "/usr/bin"}
    ran = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        capture_output=True, text=True, check=False, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.strip() == "ok"
