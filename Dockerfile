# syntax=docker/dockerfile:1
# Multi-stage: build the release binary, ship it alone in a distroless, non-root image.
# The same image runs `hyperpage operator` (the chart) and `hyperpage portal` (the
# Deployments the operator creates).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
# The workspace's other member (the demo data source of `make run`): only its manifest, to
# load the workspace; it is not built.
COPY demo/Cargo.toml demo/
RUN mkdir src && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked && strip target/release/hyperpage

# glibc + CA certificates, no shell, no package manager; runs as uid 65532. The same layout
# as `make image` (e2e/image.sh), which builds without Docker; the README says what differs.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title=hyperpage \
      org.opencontainers.image.description="Hyperpage operator and portal" \
      org.opencontainers.image.licenses=Apache-2.0 \
      org.opencontainers.image.source=https://github.com/hyperpage-dev/hyperpage \
      org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision=$REVISION
COPY --from=build /src/target/release/hyperpage /usr/local/bin/hyperpage
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/hyperpage"]
CMD ["operator"]
