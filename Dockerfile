# One image for every fed-sx process: the `fedsx` binary, run as the service named by the
# command, e.g. `docker run fedsx:dev log-store --listen 0.0.0.0:8702 --data-dir /data`.
#   docker build -t fedsx:dev .

FROM rust:1-bookworm AS build
# librocksdb-sys generates its bindings with bindgen, which needs libclang.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# `./x dist` builds the release binary, which keeps Rust line tables (114 MB, 80 MB of it
# debug info), and ships it without them (33 MB; it fails over 40 MB); the debug info stays in
# this stage as /out/fedsx.debug, named in the binary's .gnu_debuglink, for reading a crash
# (`docker build --target build`, then `gdb /out/fedsx`, or `addr2line -e /out/fedsx.debug ADDR`).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_TARGET_DIR=/src/target ./x dist /out

FROM debian:bookworm-slim
# TLS roots are compiled in (webpki-roots); the binary needs only libc and libstdc++.
RUN groupadd --gid 10001 fedsx \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fedsx \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /out/fedsx /usr/local/bin/fedsx
USER 10001:10001
# gateway, kernel, log-store, delivery
EXPOSE 8700 8701 8702 8703
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/fedsx"]
CMD ["--help"]
