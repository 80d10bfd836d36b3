# edge: build with the locked dependencies, run as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
# The release build is profile-guided (scripts/build-release): an instrumented
# edge is trained on real traffic from wrk and h2load in front of nginx
# backends, which only this stage installs. llvm-tools gives the llvm-profdata
# that matches this rustc; the script would add it itself, but in this layer it
# is not downloaded again for every change to the sources. protoc compiles
# etcd's gRPC definitions for etcd-client (the fleet store).
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx wrk nghttp2-client python3 openssl protobuf-compiler \
 && rm -rf /var/lib/apt/lists/* \
 && rustup component add llvm-tools
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench/run ./bench/run
COPY scripts/build-release ./scripts/build-release
RUN scripts/build-release && strip target/pgo/release/edge

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home-dir /var/lib/edge --shell /usr/sbin/nologin edge \
 && mkdir -p /var/lib/edge /etc/edge \
 && chown edge:edge /var/lib/edge && chmod 0700 /var/lib/edge
COPY --from=build /src/target/pgo/release/edge /usr/local/bin/edge
COPY config/edge.toml /etc/edge/edge.toml
USER edge
VOLUME ["/var/lib/edge"]
EXPOSE 80/tcp 443/tcp 443/udp 53/udp 53/tcp
ENV EDGE_CONFIG=/etc/edge/edge.toml
ENTRYPOINT ["/usr/local/bin/edge"]
CMD ["serve"]
