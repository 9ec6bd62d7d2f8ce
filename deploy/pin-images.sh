#!/usr/bin/env bash
# Re-pins the base images of Dockerfile and docker-compose.yml to the digest their tag names
# today (run it on a machine with Docker, review the diff, commit it).
#   deploy/pin-images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for ref in python:3.11-slim postgres:16.4 nats:2.10-alpine; do
  digest=$(docker buildx imagetools inspect "$ref" --format '{{json .Manifest}}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["digest"])')
  echo "$ref@$digest"
  # Replace "<ref>@sha256:<old>" (or a bare "<ref>") wherever it is used.
  sed -i -E "s#(${ref//./\\.})(@sha256:[0-9a-f]{64})?([\"[:space:]]|\$)#\\1@${digest}\\3#" \
    Dockerfile docker-compose.yml
done
