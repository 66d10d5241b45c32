# Multi-stage build: compile in the Rust image, run from a slim Debian as a non-root user.
# Images are pinned to exact versions, so that a rebuild builds the same thing.
FROM rust:1.89.0-bookworm AS build
WORKDIR /src
# A stripped binary: no debug info or symbols in the image (panics still name their location).
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
# Dependencies first, so that code changes do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --bin lms-sync || true
COPY src src
COPY migrations migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin lms-sync

FROM debian:12.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /app lms
COPY --from=build /src/target/release/lms-sync /usr/local/bin/lms-sync
COPY config /app/config
WORKDIR /app
USER 10001
# Inside the container the operations server must be reachable from outside it, and logs are
# JSON lines for the platform's collector (set LMS_SYNC__LOG__FORMAT=pretty to read them by eye).
ENV LMS_SYNC__SERVER__LISTEN=0.0.0.0:9000 LMS_SYNC__LOG__FORMAT=json
# glibc keeps a memory arena per thread that allocates; two are plenty for lms-sync and keep its
# memory flat however long it runs (without it, RSS drifts up by some 15 MiB on long syncs).
ENV MALLOC_ARENA_MAX=2
EXPOSE 9000
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["lms-sync", "healthcheck", "--url", "http://127.0.0.1:9000/healthz"]
ENTRYPOINT ["lms-sync"]
CMD ["run"]
