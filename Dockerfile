# qtunnel container image: make image (docker build --build-arg VERSION=...).
# Plain Dockerfile syntax: builds with the classic builder and with BuildKit.

FROM golang:1.26-bookworm AS build
WORKDIR /src
# The module cache is its own layer, rebuilt only when go.mod or go.sum change.
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
ARG VERSION=dev
# Static, as make dist builds it.
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/qtunnel/qtunnel/internal/version.Version=${VERSION}" \
      -o /out/tunnel ./cmd/tunnel \
 && mkdir -p /out/etc/qtunnel /out/var/lib/qtunnel

# distroless/static: CA certificates, tzdata and /etc/passwd, no shell.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="qtunnel" \
      org.opencontainers.image.description="Bidirectional QUIC tunnel gateway" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/tunnel /tunnel
COPY LICENSE /usr/share/doc/qtunnel/LICENSE
# Mount points owned by the runtime user, so that a fresh named volume is
# writable by it: configuration (read-only is fine) and state (the
# server's key, which keeps its pin across restarts and upgrades).
COPY --from=build --chown=65532:65532 /out/etc/qtunnel /etc/qtunnel
COPY --from=build --chown=65532:65532 /out/var/lib/qtunnel /var/lib/qtunnel
# The server's state_dir when its file sets none (as under systemd).
ENV STATE_DIRECTORY=/var/lib/qtunnel
VOLUME ["/etc/qtunnel", "/var/lib/qtunnel"]
WORKDIR /var/lib/qtunnel
# 65532 is distroless's "nonroot"; numeric so that runtimes can check it.
USER 65532:65532
# The tunnel (QUIC) and the public HTTP listener of examples/server.yaml.
EXPOSE 4443/udp 8080/tcp
ENTRYPOINT ["/tunnel"]
CMD ["server", "-config", "/etc/qtunnel/server.yaml"]
