# Images of the member (`--target ferrokv`) and the operator (`--target operator`).
# Built by `make images`; the kind e2e suite loads them into the cluster.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p ferrokv -p ferrokv-operator

FROM debian:bookworm-slim AS ferrokv
COPY --from=build /src/target/release/ferrokv /usr/local/bin/ferrokv
EXPOSE 2379 2380
ENTRYPOINT ["/usr/local/bin/ferrokv"]

FROM debian:bookworm-slim AS operator
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/ferrokv-operator /usr/local/bin/ferrokv-operator
# Restore drills (spec.backup.verify) run `ferrokv snapshot restore` and a scratch member.
COPY --from=build /src/target/release/ferrokv /usr/local/bin/ferrokv
ENTRYPOINT ["/usr/local/bin/ferrokv-operator"]
