# syntax=docker/dockerfile:1

# One image per Warren service, all built from this file:
#
#   docker build --target email-worker -t warren/email-worker .
#
# The builder compiles the binaries listed in BINS (space-separated); each
# service stage copies its own binary and runs it as a non-root user.

FROM rust:1-bookworm AS builder
ARG BINS="email-worker"
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds;
# the binaries are copied out of the cached target directory in the same step.
# $bin_args is split into words on purpose.
# hadolint ignore=SC2086
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    set -eux; \
    bin_args=""; \
    for bin in $BINS; do bin_args="$bin_args --bin $bin"; done; \
    cargo build --release --locked $bin_args; \
    mkdir -p /out; \
    for bin in $BINS; do cp "target/release/$bin" /out/; done

FROM debian:bookworm-slim AS runtime
# ca-certificates: TLS to the broker and to SMTP servers uses the system roots.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 warren; \
    useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin warren
WORKDIR /app
# Writable by the service user: the email worker's outbox transport writes
# here (email.outbox_dir defaults to "outbox", relative to /app).
RUN install -d -o 10001 -g 10001 /app/outbox
STOPSIGNAL SIGTERM

FROM runtime AS email-worker
COPY --from=builder /out/email-worker /usr/local/bin/email-worker
COPY services/email-worker/templates /app/templates
ENV WARREN_EMAIL__TEMPLATES_DIR=/app/templates
USER 10001
ENTRYPOINT ["/usr/local/bin/email-worker"]
