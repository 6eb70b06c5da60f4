# Berth's container image, built from source:
#
#   docker build -t berth .
#   docker run -d -p 5000:5000 -v berth-data:/var/lib/berth berth
#
# The binary is linked statically (glibc, -C target-feature=+crt-static), so the
# runtime stage is FROM scratch: the binary, CA certificates (for S3 and
# upstream registries over HTTPS), an /etc/passwd naming the user it runs as,
# and the data directory. No shell, no package manager; the health check is
# the binary itself (`berth healthcheck`).
#
# deploy/image/Dockerfile.scratch is this runtime stage alone, for a binary
# built on the host (where no base image can be pulled); scripts/e2e-image.sh
# builds and tests that one and checks that both runtime stages agree.

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked -p berth-server --target x86_64-unknown-linux-gnu \
 && mkdir -p /image/rootfs/usr/local/bin /image/rootfs/etc/ssl/certs /image/rootfs/tmp /image/data \
 && objcopy --strip-debug target/x86_64-unknown-linux-gnu/release/berth /image/rootfs/usr/local/bin/berth \
 && cp /etc/ssl/certs/ca-certificates.crt /image/rootfs/etc/ssl/certs/ \
 && cp deploy/image/passwd deploy/image/group deploy/image/nsswitch.conf /image/rootfs/etc/ \
 && chmod 1777 /image/rootfs/tmp

# ---- runtime: keep in step with deploy/image/Dockerfile.scratch ----
FROM scratch AS runtime
COPY --from=build /image/rootfs/ /
COPY --chown=65532:65532 --from=build /image/data/ /var/lib/berth/
USER 65532:65532
ENV BERTH_LISTEN=0.0.0.0:5000 \
    BERTH_DATA_DIR=/var/lib/berth \
    BERTH_LOG__FORMAT=json \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
VOLUME ["/var/lib/berth"]
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/berth", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/berth"]
CMD ["serve"]
