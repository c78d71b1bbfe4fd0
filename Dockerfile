# Build stage: compile the sqlswitch binary.
FROM rust:1-bookworm AS build
WORKDIR /src
# Nothing but Rust: etcd-client's gRPC code is checked in (vendor/, decision 0021).
COPY . .
RUN cargo build --release --locked -p sqlswitch

# Run stage: the binary alone, as a non-root user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin sqlswitch \
    && mkdir -p /etc/sqlswitch
COPY --from=build /src/target/release/sqlswitch /usr/local/bin/sqlswitch
USER 10001
EXPOSE 6432 6433 9930
# Alive: the daemon answers on its admin socket (`[admin] socket`: /tmp/sqlswitch.sock in the
# image, which has no /run/sqlswitch, unless the config says otherwise). Readiness for traffic is /readyz on the metrics port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s CMD ["/usr/local/bin/sqlswitch", "ctl", "status"]
ENTRYPOINT ["/usr/local/bin/sqlswitch"]
CMD ["run", "--config", "/etc/sqlswitch/sqlswitch.toml"]
