# edge: build with the locked dependencies, run as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/edge

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/edge --shell /usr/sbin/nologin edge \
 && mkdir -p /var/lib/edge /etc/edge \
 && chown edge:edge /var/lib/edge && chmod 0700 /var/lib/edge
COPY --from=build /src/target/release/edge /usr/local/bin/edge
COPY config/edge.toml /etc/edge/edge.toml
USER edge
VOLUME ["/var/lib/edge"]
EXPOSE 80/tcp 443/tcp 53/udp 53/tcp
ENV EDGE_CONFIG=/etc/edge/edge.toml
ENTRYPOINT ["/usr/local/bin/edge"]
CMD ["serve"]
