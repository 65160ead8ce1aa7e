# nodeguard's image: one static binary on an empty base, run as an unprivileged user.
# Its name and tag live in one place, the `images` entry of deploy/base/kustomization.yaml
# (the tag is the crate's version; tests/deploy.rs checks both agree):
#
#   docker build -t "$(.ci/image)" .
#
# Multi-arch builds (docker buildx --platform linux/amd64,linux/arm64) compile natively
# for each platform.
#
# BINARY=prebuilt takes a static binary built outside instead of compiling one, from a
# build context holding only `nodeguard` (what .ci/build-image does, where no base image
# can be pulled); the image's last stage is the same either way.

ARG BINARY=compiled

FROM rust:1-bookworm AS compiled
ARG TARGETARCH
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
        amd64) echo x86_64-unknown-linux-musl ;; \
        arm64) echo aarch64-unknown-linux-musl ;; \
        *) echo "unsupported architecture ${TARGETARCH}" >&2; exit 1 ;; \
    esac >/target && rustup target add "$(cat /target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY src src
COPY benches benches
# A workspace member: cargo reads every member's manifest, though the binary never links it.
COPY testkit testkit
RUN cargo build --release --locked --target "$(cat /target)" --bin nodeguard \
    && cp "target/$(cat /target)/release/nodeguard" /nodeguard

FROM scratch AS prebuilt
COPY nodeguard /nodeguard

FROM ${BINARY} AS binary

FROM scratch
COPY --from=binary /nodeguard /nodeguard
# The numeric user the Deployment's securityContext expects (runAsNonRoot).
USER 65532:65532
ENTRYPOINT ["/nodeguard"]
CMD ["serve"]
