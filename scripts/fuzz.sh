#!/usr/bin/env bash
# Runs every fuzz target of the module (every `func Fuzz*` that
# `go test -list` finds, in any package but e2e) for FUZZTIME each, one
# after the other, and fails if any finds an input that breaks it. Used by
# `make fuzz` (long) and `make fuzz-ci` (bounded, in CI).
#
# A finding is written by `go test` to PKG/testdata/fuzz/FuzzName/<hash>:
# fix the bug, and commit that file as a regression seed.
set -uo pipefail
fuzztime=${1:?usage: fuzz.sh FUZZTIME}
cd "$(dirname "$0")/.."

start=$SECONDS
pkgs=$(go list ./... | grep -v '/e2e$') || exit 1
# One `go test -list` for every package builds their test binaries in
# parallel. It prints each package's matching names, then "ok  PKG ...".
if ! list=$(go test -list '^Fuzz' $pkgs); then
  echo "$list"
  echo "fuzz: go test -list failed"
  exit 1
fi
targets=$(awk '/^Fuzz/ { names = names " " $1; next }
               /^ok/   { n = split(names, a, " "); for (i = 1; i <= n; i++) print $2, a[i]; names = "" }' <<<"$list")
if [ -z "$targets" ]; then
  echo "fuzz: no fuzz targets found"
  exit 1
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT

# fuzz_one runs one target. Go 1.26's fuzz coordinator can fail a target
# with a bare "context deadline exceeded" at the -fuzztime boundary when a
# loaded machine delays a worker (golang/go#75804, fixed in Go 1.27). That
# failure writes no input, so it is retried once; a failure that writes an
# input, or that happens twice, is a failure.
fuzz_one() {
  local pkg=$1 name=$2 try
  for try in 1 2; do
    if go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" "$pkg" 2>&1 | tee "$out"; [ "${PIPESTATUS[0]}" -eq 0 ]; then
      return 0
    fi
    if grep -q 'Failing input written' "$out" || ! grep -q '^    context deadline exceeded$' "$out"; then
      return 1
    fi
    [ "$try" = 1 ] && echo "fuzz: $name: the fuzz coordinator's deadline race (golang/go#75804), no input written; running it again"
  done
  return 1
}

failed=()
summary=()
while read -r pkg name; do
  echo "== $pkg $name ($fuzztime)"
  t0=$SECONDS
  if fuzz_one "$pkg" "$name"; then
    summary+=("$(printf '%-4s %4ds  %s %s' ok $((SECONDS - t0)) "$pkg" "$name")")
  else
    summary+=("$(printf '%-4s %4ds  %s %s' FAIL $((SECONDS - t0)) "$pkg" "$name")")
    failed+=("$pkg $name")
  fi
done <<<"$targets"

echo
echo "== fuzz summary: $(wc -l <<<"$targets") targets, ${fuzztime} each, $((SECONDS - start))s in all"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo
  echo "fuzz: ${#failed[@]} target(s) failed:"
  printf '  %s\n' "${failed[@]}"
  echo "the failing inputs are in each package's testdata/fuzz/<target>/ (see the output above)"
  exit 1
fi
