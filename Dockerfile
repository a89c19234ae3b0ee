# syntax=docker/dockerfile:1
# One image for every role: reverse-http proxy | agent | lb | certs | auth ...
#
#   docker build -t reverse-http \
#     --build-arg VERSION=$(git describe --tags --always --dirty) \
#     --build-arg COMMIT=$(git rev-parse --short HEAD) .
#   docker run --rm reverse-http proxy --help
#
# A static binary (CGO_ENABLED=0) on distroless/static: CA certificates,
# /etc/passwd with the nonroot user (65532), no shell. docs/deploy.md says
# what is checked where (deploy/deploy_test.go lints this file; no image is
# built in CI).

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH=amd64
ARG VERSION=dev
ARG COMMIT=none
ARG DATE=unknown
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
    -ldflags "-s -w -X github.com/reverse-http/reverse-http/internal/cli.Version=${VERSION} -X github.com/reverse-http/reverse-http/internal/cli.Commit=${COMMIT} -X github.com/reverse-http/reverse-http/internal/cli.Date=${DATE}" \
    -o /out/reverse-http ./cmd/reverse-http

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/reverse-http /usr/local/bin/reverse-http
USER 65532:65532
# proxy: 3128/tcp clients, 4242/udp agents (QUIC), 4242/tcp agents (TLS on
# TCP, where UDP is blocked); lb: 3129/tcp clients;
# 9090/tcp is the usual --metrics.listen-address (off unless given).
EXPOSE 3128/tcp 4242/udp 4242/tcp 3129/tcp 9090/tcp
ENTRYPOINT ["/usr/local/bin/reverse-http"]
CMD ["--help"]
