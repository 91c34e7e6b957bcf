# syntax=docker/dockerfile:1
# Build: dependencies in their own layer, so a source change rebuilds only progressd.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
RUN mkdir src migrations && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
COPY migrations ./migrations
# /client.js and /dashboard are embedded with include_bytes!.
COPY assets ./assets
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

# Run: a small image with the binary alone, as a non-root user. TLS to
# managed Redis and PostgreSQL is rustls inside the binary (no OpenSSL); the
# system's CA certificates are what it verifies servers against.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home progressd
COPY --from=build /src/target/release/progressd /usr/local/bin/progressd
USER 10001
# MIMALLOC_ALLOW_THP=0: no transparent huge pages for the heap even where
# the host's THP setting is `always` (the build already leaves them out
# where it is `madvise`): an open event stream costs 14 KiB instead of 22
# (issue 23, Cargo.toml's mimalloc entry).
ENV PORT=8080 \
    PROGRESS_LOG_FORMAT=json \
    MIMALLOC_ALLOW_THP=0
EXPOSE 8080
# The image has no curl: the binary probes its own /healthz.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/progressd", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/progressd"]
