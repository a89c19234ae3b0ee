#!/usr/bin/env bash
# Checks `make dist` on one platform (this machine's), as make test-deploy
# does: the archive holds the binary, README.md and docs/, SHA256SUMS
# verifies, the binary runs and reports the version, and a second build of
# the same commit gives the same bytes.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
platform=$(go env GOOS)/$(go env GOARCH)
make -s dist DIST="$tmp/a" PLATFORMS="$platform" VERSION=v0.0.0-test COMMIT=abc1234 >/dev/null
make -s dist DIST="$tmp/b" PLATFORMS="$platform" VERSION=v0.0.0-test COMMIT=abc1234 >/dev/null
name=reverse-http-v0.0.0-test-${platform/\//-}
(cd "$tmp/a" && sha256sum --quiet -c SHA256SUMS)
cmp "$tmp/a/SHA256SUMS" "$tmp/b/SHA256SUMS" || { echo "dist: two builds of one commit differ"; exit 1; }
list=$(tar -tzf "$tmp/a/$name.tar.gz")
for f in reverse-http README.md docs/operations.md; do
  grep -qx "$name/$f" <<<"$list" || { echo "dist: $name.tar.gz has no $f"; exit 1; }
done
tar -xzf "$tmp/a/$name.tar.gz" -C "$tmp"
v=$("$tmp/$name/reverse-http" --version-json)
grep -q '"version":"v0.0.0-test"' <<<"$v" && grep -q '"commit":"abc1234"' <<<"$v" || { echo "dist: version $v"; exit 1; }
echo "dist: $name.tar.gz ok, reproducible"
