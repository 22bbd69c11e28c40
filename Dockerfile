# syntax=docker/dockerfile:1
# Strata's image: a --locked release build of the `strata` binary alone
# (no dev-dependencies compiled, symbols stripped), then a small Debian
# runtime that runs as an unprivileged user.
#
#   docker build -t strata .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     -v "$PWD/my-strata.toml:/etc/strata/strata.toml:ro" strata
#   docker compose up --build      # Redis, two Strata instances, two origins
#
# The example origin (a demo tool, built with the test-only crates) is a
# separate target, `--target origin`, used by docker-compose.yml; the
# default (last) target never contains it. Ports: 8080 proxy, 8443 TLS
# (when [server.tls] is configured), 9090 admin.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
# Stripped: the release profile keeps line tables for profiling on a
# workstation; the image needs none.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_PROFILE_RELEASE_DEBUG=false
# The registry and target directories are BuildKit caches, so a source
# change rebuilds Strata, not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin strata \
    && mkdir -p /out \
    && cp target/release/strata /out/

FROM builder AS origin-builder
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --example origin \
    && cp target/release/examples/origin /out/strata-origin

FROM debian:bookworm-slim AS base
RUN useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin strata

# The demo origin (docker-compose.yml's origin-a and origin-b).
FROM base AS origin
COPY --from=origin-builder /out/strata-origin /usr/local/bin/strata-origin
COPY --from=builder /out/strata /usr/local/bin/strata
USER strata
ENTRYPOINT ["strata-origin"]

# The Strata image (the default target).
FROM base AS strata
COPY --from=builder /out/strata /usr/local/bin/strata
COPY config/docker.toml /etc/strata/strata.toml
USER strata
EXPOSE 8080 8443 9090
# `strata healthcheck` GETs the admin /health named by the config (no curl
# in the image): healthy while at least one upstream is in rotation.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["strata", "healthcheck", "--config", "/etc/strata/strata.toml"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["strata"]
CMD ["serve", "--config", "/etc/strata/strata.toml"]
