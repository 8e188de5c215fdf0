# The `weft` image: one binary for the control plane (`weft control --kubernetes`), the
# sidecar (`weft proxy`) and the init container (`weft iptables`), as `weft manifest
# generate` and the injection webhook use it.
#
#   docker build -t REGISTRY/weft:0.1.0 . && docker push REGISTRY/weft:0.1.0
#   weft manifest generate --set image=REGISTRY/weft:0.1.0 | kubectl apply --server-side -f -
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --profile dist --locked -p weft-cli

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/dist/weft /usr/local/bin/weft
USER 1337:1337
ENTRYPOINT ["/usr/local/bin/weft"]
