# Build: docker build -t reverse-http .
# Run:   docker run --rm reverse-http --help
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X github.com/reverse-http/reverse-http/internal/cli.Version=${VERSION}" \
    -o /out/reverse-http ./cmd/reverse-http

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/reverse-http /usr/local/bin/reverse-http
EXPOSE 3128/tcp 4242/udp 9090/tcp
ENTRYPOINT ["/usr/local/bin/reverse-http"]
