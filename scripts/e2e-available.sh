#!/usr/bin/env bash
# Says whether the kind e2e suite (`make e2e`, not part of `make test`) can run here: it needs a
# docker engine, which crates/operator/e2e/lib/common.sh installs (Debian's docker.io) and starts
# when missing; kind, kubectl, helm and every image it builds itself.
if command -v dockerd >/dev/null 2>&1 || apt-cache policy docker.io 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  echo "e2e: not run by 'make test': run 'make e2e' for the kind suite (docs/e2e.md)"
  exit 0
fi
echo "e2e: the kind suite needs a docker engine, and docker.io is not installable here"
exit 1
