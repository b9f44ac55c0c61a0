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
# The release binary keeps Rust line tables (114 MB, 80 MB of it debug info); the image
# gets it without them (33 MB), and the debug info stays in this stage as /fedsx.debug,
# named in the binary's .gnu_debuglink, for reading a crash (`docker build --target build`, then
# `gdb /fedsx` finds /fedsx.debug; or `addr2line -e /fedsx.debug ADDRESS`).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin fedsx \
 && objcopy --only-keep-debug target/release/fedsx /fedsx.debug \
 && objcopy --strip-debug --add-gnu-debuglink=/fedsx.debug target/release/fedsx /fedsx

FROM debian:bookworm-slim
# TLS roots are compiled in (webpki-roots); the binary needs only libc and libstdc++.
RUN groupadd --gid 10001 fedsx \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fedsx \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY --from=build /fedsx /usr/local/bin/fedsx
USER 10001:10001
# gateway, kernel, log-store, delivery
EXPOSE 8700 8701 8702 8703
VOLUME ["/data"]
ENTRYPOINT ["/usr/local/bin/fedsx"]
CMD ["--help"]
