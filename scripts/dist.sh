#!/usr/bin/env bash
# Release archives: scripts/dist.sh OUTDIR VERSION COMMIT [OS/ARCH ...]
# Used by `make dist`. For each platform (default: linux and darwin on amd64
# and arm64) writes OUTDIR/reverse-http-VERSION-OS-ARCH.tar.gz holding
# reverse-http, README.md, LICENSE (if there is one) and docs/, then
# OUTDIR/SHA256SUMS. Reproducible: the same commit gives the same bytes
# (-trimpath, no build ID, the commit's time as the build date and as every
# file's time in the archive, sorted names, owner 0, gzip without a name or
# time).
set -euo pipefail
out=${1:?usage: dist.sh OUTDIR VERSION COMMIT [OS/ARCH ...]}
version=${2:?version}
commit=${3:?commit}
shift 3
platforms=("$@")
[ ${#platforms[@]} -gt 0 ] || platforms=(linux/amd64 linux/arm64 darwin/amd64 darwin/arm64)

epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}
date=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
pkg=github.com/reverse-http/reverse-http/internal/cli
ldflags="-s -w -buildid= -X $pkg.Version=$version -X $pkg.Commit=$commit -X $pkg.Date=$date"

mkdir -p "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
archives=()
for p in "${platforms[@]}"; do
  os=${p%/*}
  arch=${p#*/}
  name=reverse-http-$version-$os-$arch
  dir=$stage/$name
  mkdir -p "$dir"
  echo "building $name"
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$dir/reverse-http" ./cmd/reverse-http
  cp README.md "$dir/"
  [ ! -e LICENSE ] || cp LICENSE "$dir/"
  cp -R docs "$dir/docs"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    --mode='u+rwX,go+rX,go-w' -C "$stage" -cf - "$name" | gzip -9 -n >"$out/$name.tar.gz"
  archives+=("$name.tar.gz")
done
(cd "$out" && sha256sum "${archives[@]}" >SHA256SUMS)
echo "wrote ${archives[*]} and SHA256SUMS to $out"
