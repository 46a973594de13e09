#!/usr/bin/env bash
# Says whether the kind e2e suite can run here; `make test` prints this so a skipped e2e run is
# visible rather than silent.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && command -v kind >/dev/null 2>&1 && command -v kubectl >/dev/null 2>&1; then
  echo "e2e: docker, kind and kubectl are available: run 'make e2e' for the kind suite"
  exit 0
fi
echo "e2e: skipped: the kind suite needs a Docker engine, kind and kubectl (run 'make e2e' where they exist)"
exit 1
