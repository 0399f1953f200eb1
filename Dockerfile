# kmsproxy container image: a static binary on an empty (distroless static
# or scratch) base, running as a non-root UID with a read-only root.
#
#   podman build --format docker -t kmsproxy .      # docker format keeps HEALTHCHECK
#   docker build -t kmsproxy .
#
# Build arguments:
#   BUILD_IMAGE    Go toolchain image; needs /usr/local/go/bin/go and no shell.
#   RUNTIME_IMAGE  base of the final image; scratch works, nothing is used from it.
#   VERSION, COMMIT  stamped into `kmsproxy version`.
# Modules come from the Go module proxy, or from vendor/ when the build
# context has one (`go mod vendor` for a build without network).
#
# Volume: /var/lib/kmsproxy, the activation inventory (inventory.path).
# Ports: 1688/tcp KMS clients. Management (/ /inventory /metrics /healthz /readyz) is on
# 127.0.0.1:9464 inside the container; it is not exposed. To scrape it, set
# KMSPROXY_MANAGEMENT_LISTEN=0.0.0.0:9464 and publish 9464 only on an
# internal network, never on the DMZ side.

ARG BUILD_IMAGE=golang:1.26-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${BUILD_IMAGE} AS build
ARG VERSION=dev
ARG COMMIT=unknown
# Every RUN below is exec form, so the build image needs no shell. Exec form
# does not expand variables, so the flags travel in GOFLAGS (ENV does expand,
# and the go command splits GOFLAGS with quoting); this is
#   CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=… -X main.commit=…"
ENV CGO_ENABLED=0 \
    GOTOOLCHAIN=local \
    GOFLAGS="-trimpath '-ldflags=-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}'"
WORKDIR /src
COPY . .
RUN ["/usr/local/go/bin/go", "build", "-o", "/out/kmsproxy", "./cmd/kmsproxy"]
# Fail the build, not the deployment, if the default config is invalid.
RUN ["/out/kmsproxy", "check", "--config", "/src/examples/dmz.yaml"]
# The inventory's directory, made without a shell (WORKDIR creates
# directories): /var/lib root's, /var/lib/kmsproxy the runtime user's, so
# that directory is all the proxy can write.
WORKDIR /out/var/lib
WORKDIR /out/var-lib-kmsproxy

FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG COMMIT=unknown
LABEL org.opencontainers.image.title="kmsproxy" \
      org.opencontainers.image.description="DCE/RPC filtering proxy that lets only KMS activation through" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}"
COPY --from=build /out/kmsproxy /usr/local/bin/kmsproxy
COPY examples/dmz.yaml /etc/kmsproxy/kmsproxy.yaml
COPY --from=build /out/var /var
COPY --from=build --chown=65532:65532 /out/var-lib-kmsproxy /var/lib/kmsproxy
# The activation inventory (SQLite, WAL) lives on a volume: mount one there
# to keep it across containers (an anonymous volume is made otherwise).
ENV KMSPROXY_CONFIG=/etc/kmsproxy/kmsproxy.yaml \
    KMSPROXY_INVENTORY_PATH=/var/lib/kmsproxy/inventory.db
VOLUME ["/var/lib/kmsproxy"]
# Numeric, so no /etc/passwd is needed (scratch has none).
USER 65532:65532
EXPOSE 1688/tcp
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/kmsproxy", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/kmsproxy"]
CMD ["serve"]
