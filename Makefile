# ferrokv — the two set-up commands are `make run` and `make test`; both install what they need.
SHELL := /bin/bash
CARGO ?= cargo
MEMBERS ?= 3
RUN_DIR ?= .run

.PHONY: all build run stop test deps bench e2e crds images fmt lint clean fuzz

all: build

build:
	$(CARGO) fetch
	$(CARGO) build --workspace --bins

## make run: build ferrokv and start a local cluster of $(MEMBERS) members on loopback.
run:
	$(CARGO) build --release -p ferrokv
	MEMBERS=$(MEMBERS) RUN_DIR=$(RUN_DIR) scripts/run-cluster.sh start

## make stop: stop the cluster `make run` started.
stop:
	RUN_DIR=$(RUN_DIR) scripts/run-cluster.sh stop

## make deps: what the tests need besides cargo: Debian's etcd 3.4 and etcdctl, and, built from
## the Go module proxy into ~/.cache/ferrokv (seconds when cached), etcd 3.6.16 with etcdctl and
## etcdutl, the Kubernetes control plane v1.34.10 and helm; and the object-storage servers of the
## backup tests (moto from PyPI, Azurite from npm, fake-gcs-server from the Go module proxy);
## and, for the rolling upgrade test, the ferrokv binary of commit 29f8bdd (cargo, cached).
deps:
	scripts/install-test-deps.sh
	scripts/build-etcd36.sh >/dev/null
	scripts/build-etcd-tools.sh >/dev/null
	scripts/build-kube.sh >/dev/null
	scripts/build-helm.sh >/dev/null
	scripts/build-backup-servers.sh >/dev/null
	scripts/build-ferrokv-old.sh >/dev/null

## make test: install test dependencies, check formatting and lints, build every binary, run
## every test, then the kind e2e suite (installs docker.io when missing; fails, never skips,
## when it cannot run).
## A clean clone gains nothing from incremental compilation, and its files take gigabytes, so
## make test turns it off; the free disk space is printed before and after (a full disk once
## failed a CI run).
test: export CARGO_INCREMENTAL = 0
test: deps lint
	@df -h . | sed 's/^/make test: disk: /'
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast
	crates/operator/e2e/run.sh
	@df -h . | sed 's/^/make test: disk: /'; du -sh target | sed 's/^/make test: /'

## make fuzz: each cargo-fuzz target (fuzz/fuzz_targets) for FUZZ_SECONDS (default 120), growing
## fuzz/corpus/<target>; stable rustc via RUSTC_BOOTSTRAP. make test replays that corpus.
FUZZ_SECONDS ?= 120
fuzz:
	cd fuzz && for t in decode_request apply; do \
	  RUSTC_BOOTSTRAP=1 "$$($(CURDIR)/scripts/install-cargo-fuzz.sh)/cargo-fuzz" run -O --fuzz-dir . $$t corpus/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -max_len=4096 || exit 1; \
	done

## make bench: ferrokv vs etcd on this machine, same run, alternating rounds.
bench: deps
	$(CARGO) build --release -p ferrokv -p ferrokv-bench
	FERROKV_BIN=$(CURDIR)/target/release/ferrokv $(CURDIR)/target/release/ferrokv-bench --rounds 3
	$(CURDIR)/target/release/ferrokv-microbench --rounds 3
	FERROKV_BIN=$(CURDIR)/target/release/ferrokv $(CURDIR)/target/release/ferrokv-breakdown --rounds 3
	FERROKV_BIN=$(CURDIR)/target/release/ferrokv $(CURDIR)/target/release/ferrokv-scale --rounds 2

## make e2e: the kind end-to-end suite alone (docs/e2e.md; the last step of make test): images and
## a kind node image built offline, the cluster's etcd is ferrokv; fails, never skips, when a
## prerequisite cannot be had.
e2e:
	crates/operator/e2e/run.sh

## make crds: regenerate the CRD YAML from the Rust types (a test fails when it drifts).
crds:
	$(CARGO) run -q -p ferrokv-operator -- crd > crds/etcdcluster.yaml
	cp crds/etcdcluster.yaml charts/ferrokv-operator/crds/etcdcluster.yaml
	$(CARGO) run -q -p ferrokv-operator -- crd etcdbackup > crds/etcdbackup.yaml
	cp crds/etcdbackup.yaml charts/ferrokv-operator/crds/etcdbackup.yaml

## make images: the member, operator and e2e images, built with no registry (a debootstrap base;
## starts dockerd, installing docker.io, when needed). Where a registry is reachable the
## Dockerfile builds them the ordinary way: docker build --target ferrokv|operator .
images:
	scripts/build-images.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fetch
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(RUN_DIR)
