#!/usr/bin/env bash
# Jaeger, the trace receiver the tracing test exports to (README, "Tracing"): an implementation we
# did not write, which receives OTLP over HTTP and gRPC and answers queries over its HTTP API.
#
#   install  build jaeger into the tools cache, unless the pinned version is already built there;
#            prints the binary's path on its last line
#
# Built from the Go module proxy (CI reaches only the package registries) with the Jaeger version
# and every dependency's checksum pinned by tools/jaeger/go.mod and go.sum: about 3.5 minutes on
# two cores the first time, into ${REGNOTIFY_EXTERNAL_TOOLS_DIR:-~/.cache/regnotify/go-bin}. The tracing
# test finds it there (or at REGNOTIFY_EXTERNAL_JAEGER).
# To upgrade: `cd tools/jaeger && go get -tool github.com/jaegertracing/jaeger/cmd/jaeger@vX`.
set -euo pipefail
cd "$(dirname "$0")/.."

tools_dir="${REGNOTIFY_EXTERNAL_TOOLS_DIR:-$HOME/.cache/regnotify/go-bin}"
jaeger="$tools_dir/jaeger"
# The pin: the Jaeger version and the checksums of everything it is built from.
pin="$(awk '$1 == "github.com/jaegertracing/jaeger" { print $2 }' tools/jaeger/go.mod)-$(sha256sum tools/jaeger/go.sum | cut -c1-16)"

die() {
  echo "error: $*" >&2
  exit 1
}

install_jaeger() {
  [[ "$pin" != -* ]] || die "tools/jaeger/go.mod pins no github.com/jaegertracing/jaeger"
  if [[ -x "$jaeger" && "$(cat "$jaeger.pin" 2>/dev/null)" == "$pin" ]]; then
    echo "$jaeger"
    return
  fi
  command -v go >/dev/null || die "jaeger is not in $tools_dir and go is not installed to build it"
  echo "jaeger $pin: building into $tools_dir (about 3.5 minutes on two cores, once)" >&2
  mkdir -p "$tools_dir"
  # Built beside its final name and renamed into place, so a concurrent or interrupted build never
  # leaves a half-written binary behind. -mod=readonly: go.mod and go.sum are the pin.
  local partial
  partial="$(mktemp "$tools_dir/.jaeger.XXXXXX")"
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -f '$partial'" EXIT
  (cd tools/jaeger && go build -mod=readonly -buildvcs=false -o "$partial" \
    github.com/jaegertracing/jaeger/cmd/jaeger)
  mv -f "$partial" "$jaeger"
  trap - EXIT
  echo "$pin" >"$jaeger.pin"
  echo "$jaeger"
}

case "${1:-}" in
  install) install_jaeger ;;
  *) die "usage: scripts/jaeger.sh install" ;;
esac
