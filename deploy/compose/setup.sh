#!/bin/sh
# The exchange's one-off set-up in deploy/compose.yaml, as its administrator: shared topics and
# the services' principals with the passwords from the secrets, then each demo agency's
# principal, keys, directory record and an API token for its systems. Safe to run again.
set -eu
cbx setup --passwords-dir /run/secrets/passwords
cbx schemas publish
for agency in $CBX_AGENCIES; do
  cbx agency add "$agency" --password-file "/run/secrets/passwords/$agency.password"
  [ -f "$CBX_HOME/keys/$agency.keystore.json" ] || cbx keys new --agency "$agency"
  cbx directory publish --agency "$agency"
  [ -f "$CBX_HOME/tokens/$agency.first" ] || {
    mkdir -p "$CBX_HOME/tokens"
    cbx connector token add --agency "$agency" > "$CBX_HOME/tokens/$agency.first"
  }
done
