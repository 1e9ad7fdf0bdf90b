# Dray in a container: `docker build -t dray .` at the repository root, then
#   docker run -d --name dray --stop-timeout 30 -p 127.0.0.1:7700:7700 -v dray-data:/var/lib/dray \
#     -e DRAY_MEMORY_BUDGET_BYTES=1GiB dray
# docs/operations.md ("Running in a container") explains each choice.

# ---- build: the workspace's `dray` binary, in release mode ----------------------------------
# The toolchain the workspace's `rust-version` asks for; override with --build-arg RUST_IMAGE=...
ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the target directory between builds (BuildKit, buildah and
# podman all honour them); the binary is copied out of the cached target before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dray \
    && install -D -m 0755 target/release/dray /out/dray

# ---- runtime: Debian slim, the binary, a non-root user, a data volume ----------------------
FROM ${RUNTIME_IMAGE} AS runtime
# A fixed uid/gid so a bind-mounted data directory can be chowned to it on the host.
RUN groupadd --system --gid 10001 dray \
    && useradd --system --uid 10001 --gid dray --home-dir /var/lib/dray --no-create-home --shell /usr/sbin/nologin dray \
    && install -d -m 0700 -o dray -g dray /var/lib/dray
COPY --from=build /out/dray /usr/local/bin/dray

# Inside the container the server listens on every interface; publish the port only where it is
# needed (`-p 127.0.0.1:7700:7700`). DRAY_SERVER is where the CLI (and the health check) looks:
# change it together with DRAY_LISTEN.
ENV DRAY_LISTEN=0.0.0.0:7700 \
    DRAY_DATA_DIR=/var/lib/dray \
    DRAY_SERVER=http://127.0.0.1:7700 \
    DRAY_LOG_FORMAT=json
VOLUME ["/var/lib/dray"]
WORKDIR /var/lib/dray
USER dray:dray
EXPOSE 7700
# The slim image has no curl: the binary probes GET /healthz itself.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["dray", "health", "--timeout-ms", "3000"]
# `dray serve` handles SIGTERM itself (graceful shutdown, the store closed cleanly) and starts no
# child processes, so it can be PID 1 without an init.
STOPSIGNAL SIGTERM
ENTRYPOINT ["dray"]
CMD ["serve"]
