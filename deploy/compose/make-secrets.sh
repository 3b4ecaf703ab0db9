#!/bin/sh
# Writes the secrets deploy/compose.yaml reads, once: random passwords (one per principal), the
# keystore passphrase and the Kafka cluster id, each a file of mode 0600 in deploy/compose/secrets/.
set -eu
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
new() { [ -f "secrets/$1" ] || head -c 32 /dev/urandom | base64 | tr -d '/+=\n' > "secrets/$1"; }
for principal in admin svc-router svc-tracker svc-operator \
    la-e10000016 la-e10000017 pf-e23000032 pf-e23000003; do
  new "$principal.password"
done
new keystore.passphrase
[ -f secrets/cluster.id ] || head -c 16 /dev/urandom | base64 | tr '/+' '_-' | tr -d '=\n' > secrets/cluster.id
echo "secrets in $(pwd)/secrets"
