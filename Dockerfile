# syntax=docker/dockerfile:1

# One image per Warren service, all built from this file:
#
#   docker build --target email-worker -t warren/email-worker .
#   docker build --target image-worker -t warren/image-worker .
#   docker build --target gateway      -t warren/gateway .
#   docker build --target conductor    -t warren/conductor .
#
# The builder compiles every service binary once, with the same command as
# the release build in docs/deploy.md (`cargo test -p warren-deploy-check
# --test deploy` checks that the two agree and that the binaries exist in
# the workspace); each service stage copies only its own binary and what it
# needs, and runs it as uid 10001. BuildKit shares the builder stage between the targets, so
# `docker compose build` compiles once.

# A pinned toolchain, at least the workspace's rust-version (the test checks).
# Debian bookworm, like the runtime stages, so the binaries find the glibc
# they were linked against.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds;
# the binaries are copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    cargo build --release --locked --bin email-worker --bin image-worker --bin gateway --bin conductor; \
    mkdir -p /out; \
    cp target/release/email-worker target/release/image-worker target/release/gateway target/release/conductor /out/

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to the broker, to SMTP servers and to S3 uses the
# system roots. Nothing else: no shell tools beyond Debian's essentials (the
# compose healthchecks use bash's /dev/tcp, not curl).
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 warren; \
    useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin warren
WORKDIR /app
# The workers drain on SIGTERM (consumer.shutdown_timeout); give them a stop
# grace period longer than that (compose: stop_grace_period; Kubernetes:
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

FROM runtime AS email-worker
COPY --from=builder /out/email-worker /usr/local/bin/email-worker
COPY services/email-worker/templates /app/templates
# Writable by the service user: the outbox transport writes here
# (email.outbox_dir defaults to "outbox", relative to /app).
RUN install -d -o 10001 -g 10001 /app/outbox
ENV WARREN_EMAIL__TEMPLATES_DIR=/app/templates
USER 10001:10001
# Ops: /metrics, /healthz, /readyz.
EXPOSE 9401
ENTRYPOINT ["/usr/local/bin/email-worker"]

FROM runtime AS image-worker
COPY --from=builder /out/image-worker /usr/local/bin/image-worker
# The local store's root, owned by the service user. A named volume mounted
# here starts as a copy of it, ownership included, so the gateway (which
# writes uploads) and the image worker can share one.
RUN install -d -o 10001 -g 10001 /app/data
ENV WARREN_IMAGE__LOCAL_ROOT=/app/data
USER 10001:10001
EXPOSE 9402
ENTRYPOINT ["/usr/local/bin/image-worker"]

FROM runtime AS gateway
COPY --from=builder /out/gateway /usr/local/bin/gateway
# The image worker's local store, for uploads (see the image-worker stage).
RUN install -d -o 10001 -g 10001 /app/data
ENV WARREN_IMAGE__LOCAL_ROOT=/app/data
USER 10001:10001
# HTTP API, then ops.
EXPOSE 8080 9403
ENTRYPOINT ["/usr/local/bin/gateway"]

FROM runtime AS conductor
COPY --from=builder /out/conductor /usr/local/bin/conductor
USER 10001:10001
# Ops: /metrics, /healthz, /readyz, /v1/schedules.
EXPOSE 9404
ENTRYPOINT ["/usr/local/bin/conductor"]
