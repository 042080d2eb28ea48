# syntax=docker/dockerfile:1
# The operator image (`weir-operator`): reconciles StreamJobs. Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t weir-operator:dev .
#
# Builder and runtime share a Debian release so the glibc the binary links is present at run time.
ARG RUST_IMAGE=rust:1.95-trixie
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian13:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The operator does not link RocksDB, so no libclang here; `-p weir-operator` builds only its
# own dependency tree.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin weir-operator \
 && install -D -m 0755 target/release/weir-operator /out/weir-operator \
 && strip --strip-debug /out/weir-operator

# distroless/cc: glibc and libgcc_s (Rust's unwinder), no shell, no package manager.
FROM ${RUNTIME_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="weir-operator" \
      org.opencontainers.image.description="Kubernetes operator for Weir StreamJobs" \
      org.opencontainers.image.source="https://github.com/weir-dev/weir" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Weir" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/weir-operator /usr/local/bin/weir-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/weir-operator"]
