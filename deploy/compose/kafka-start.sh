#!/bin/bash
# One node of the three-node Kafka cluster of deploy/compose.yaml (apache/kafka image): writes its
# configuration with the admin password from its secret file, formats its storage on first start
# (the SCRAM admin credential included), and runs the broker and controller.
set -euo pipefail
id="${NODE_ID:?NODE_ID is not set}"
password="$(cat /run/secrets/kafka_admin_password)"
cluster_id="$(cat /run/secrets/kafka_cluster_id)"
config=/var/lib/kafka/data/server.properties
jaas="org.apache.kafka.common.security.scram.ScramLoginModule required username=\"admin\" password=\"${password}\";"
umask 077
cat > "$config" <<PROPS
process.roles=broker,controller
node.id=${id}
controller.quorum.voters=1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093
listeners=SASL_PLAINTEXT://:9092,CONTROLLER://:9093
advertised.listeners=SASL_PLAINTEXT://kafka-${id}:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=${jaas}
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs=/var/lib/kafka/data/kraft-logs
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
unclean.leader.election.enable=false
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
# The router's group (consumer protocol): a partition changing hands waits a heartbeat at most.
group.consumer.min.heartbeat.interval.ms=100
group.consumer.heartbeat.interval.ms=250
group.consumer.min.session.timeout.ms=6000
group.consumer.session.timeout.ms=10000
PROPS
/opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id "$cluster_id" \
  --config "$config" --add-scram "SCRAM-SHA-512=[name=admin,password=${password}]"
exec /opt/kafka/bin/kafka-server-start.sh "$config"
