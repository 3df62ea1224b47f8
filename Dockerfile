# The OpenCalling server as a small container image.
#   docker build -t opencalling-server .
#   docker run -p 4433:4433/udp -p 4433:4433 -p 127.0.0.1:9090:9090 \
#       -v opencalling:/var/lib/opencalling opencalling-server
# docs/operations.md has the settings (all OPENCALLING_* variables work).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The server needs no audio code, hence no cmake.
RUN cargo build --release --locked -p calling-server

FROM debian:bookworm-slim
# ca-certificates: https:// webhook URLs are checked against the system's roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/lib/opencalling --create-home --shell /usr/sbin/nologin opencalling
COPY --from=build /src/target/release/calling-server /usr/local/bin/calling-server
USER opencalling
VOLUME /var/lib/opencalling
ENV OPENCALLING_DATA_DIR=/var/lib/opencalling \
    OPENCALLING_LISTEN=0.0.0.0:4433 \
    OPENCALLING_HTTP_LISTEN=0.0.0.0:9090
# QUIC (signaling and audio), the TCP fallback, and the HTTP listener
# (metrics, probes, admin: publish it on a private address only).
EXPOSE 4433/udp 4433/tcp 9090/tcp
HEALTHCHECK --interval=10s --timeout=6s --start-period=5s \
    CMD ["calling-server", "probe", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["calling-server"]
