"""A Strimzi cluster for an exchange: the ``Kafka``, its ``KafkaNodePool``, a ``KafkaTopic`` for
every topic and a ``KafkaUser`` for every principal, generated from the same sources the tests prove
(``Topics`` for names, partitions and settings; ``schemas/policy/acls.yaml`` for each principal's
ACLs), so the ACLs on a Strimzi cluster are exactly those of ``cbx agency add``.

Strimzi's ``v1`` API. Resource names must be DNS labels: a topic's name goes in ``spec.topicName``
and its resource is named after it with dots as dashes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from broker.admin.provision import SERVICES
from broker.kafka.acls import Grant, grants
from broker.kafka.clients import REPLICAS
from broker.kafka.settings import BROKER_GROUP_SETTINGS
from broker.kafka.topics import Topics, TopicSpec, check_agency_id
from broker.policy.profiles import agency_topics

API = "kafka.strimzi.io/v1"
_RESOURCE = {"topic": "topic", "group": "group", "transactional_id": "transactionalId"}
_PATTERN = {"literal": "literal", "prefixed": "prefix"}
_OPERATION = {"READ": "Read", "WRITE": "Write", "DESCRIBE": "Describe", "CREATE": "Create"}


def _dns(name: str) -> str:
    label = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    return label[:253]


def _acls(entries: Iterable[Grant]) -> list[dict[str, Any]]:
    """Strimzi ACL rules: one per resource and pattern, its operations together."""
    rules: dict[tuple[str, str, str], list[str]] = {}
    for g in entries:
        key = (_RESOURCE[g.resource], g.name, _PATTERN[g.pattern])
        op = _OPERATION[g.operation]
        if op not in rules.setdefault(key, []):
            rules[key].append(op)
    return [
        {
            "type": "allow",
            "resource": {"type": kind, "name": name, "patternType": pattern},
            "operations": ops,
            "host": "*",
        }
        for (kind, name, pattern), ops in rules.items()
    ]


def _labels(cluster: str) -> dict[str, str]:
    return {"strimzi.io/cluster": cluster, "app.kubernetes.io/part-of": "cbx"}


def kafka(
    cluster: str, namespace: str, kafka_version: str, storage_gi: int
) -> list[dict[str, Any]]:
    """The ``Kafka`` (KRaft, SCRAM over TLS, simple authorization, replication 3, min ISR 2) and
    its pool of three nodes, each a controller and a broker."""
    pool = {
        "apiVersion": API,
        "kind": "KafkaNodePool",
        "metadata": {"name": "nodes", "namespace": namespace, "labels": _labels(cluster)},
        "spec": {
            "replicas": REPLICAS,
            "roles": ["controller", "broker"],
            "storage": {
                "type": "jbod",
                "volumes": [
                    {
                        "id": 0,
                        "type": "persistent-claim",
                        "size": f"{storage_gi}Gi",
                        "deleteClaim": False,
                        "kraftMetadata": "shared",
                    }
                ],
            },
            "resources": {
                "requests": {"memory": "2Gi", "cpu": "500m"},
                "limits": {"memory": "2Gi"},
            },
        },
    }
    cluster_resource = {
        "apiVersion": API,
        "kind": "Kafka",
        "metadata": {"name": cluster, "namespace": namespace},
        "spec": {
            "kafka": {
                "version": kafka_version,
                "listeners": [
                    {
                        "name": "tls",
                        "port": 9093,
                        "type": "internal",
                        "tls": True,
                        "authentication": {"type": "scram-sha-512"},
                    }
                ],
                "authorization": {
                    "type": "simple",
                    # Strimzi's own operators; every cbx principal has only its ACLs.
                    "superUsers": [],
                },
                "config": {
                    "default.replication.factor": REPLICAS,
                    "min.insync.replicas": 2,
                    "offsets.topic.replication.factor": REPLICAS,
                    "transaction.state.log.replication.factor": REPLICAS,
                    "transaction.state.log.min.isr": 2,
                    "unclean.leader.election.enable": False,
                    "auto.create.topics.enable": False,
                    "allow.everyone.if.no.acl.found": False,
                    **BROKER_GROUP_SETTINGS,
                },
            },
            "entityOperator": {"topicOperator": {}, "userOperator": {}},
        },
    }
    return [cluster_resource, pool]


def topic(spec: TopicSpec, cluster: str, namespace: str) -> dict[str, Any]:
    config: dict[str, Any] = {"min.insync.replicas": 2, **spec.config}
    return {
        "apiVersion": API,
        "kind": "KafkaTopic",
        "metadata": {"name": _dns(spec.name), "namespace": namespace, "labels": _labels(cluster)},
        "spec": {
            "topicName": spec.name,
            "partitions": spec.partitions,
            "replicas": REPLICAS,
            "config": config,
        },
    }


def user(principal: str, role: str, prefix: str, cluster: str, namespace: str) -> dict[str, Any]:
    agency = principal if role == "agency" else ""
    return {
        "apiVersion": API,
        "kind": "KafkaUser",
        "metadata": {"name": _dns(principal), "namespace": namespace, "labels": _labels(cluster)},
        "spec": {
            "userName": principal,
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": "simple", "acls": _acls(grants(role, prefix, agency))},
        },
    }


def resources(
    prefix: str,
    agencies: Iterable[str],
    *,
    cluster: str = "cbx",
    namespace: str = "cbx",
    kafka_version: str = "4.1.1",
    storage_gi: int = 100,
) -> list[dict[str, Any]]:
    """Every resource of an exchange in namespace ``prefix`` with ``agencies``."""
    topics = Topics(prefix)
    agencies = sorted({check_agency_id(a) for a in agencies})
    out = kafka(cluster, namespace, kafka_version, storage_gi)
    specs = [*topics.core()]
    for a in agencies:
        specs += agency_topics(topics, a)
    out += [topic(s, cluster, namespace) for s in specs]
    for principal, (role, _name) in SERVICES.items():
        out.append(user(principal, role, prefix, cluster, namespace))
    out += [user(a, "agency", prefix, cluster, namespace) for a in agencies]
    return out


__all__ = ["API", "kafka", "resources", "topic", "user"]
