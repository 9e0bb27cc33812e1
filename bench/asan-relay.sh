#!/usr/bin/env bash
# The native relay under AddressSanitizer: builds the addon with -fsanitize=address into a
# directory of its own (build/ is left alone), then runs bench/relay-churn.ts with libasan
# preloaded into that one node process: plain, SSLRequest and direct-TLS connections through the
# relay, completing large echoes or vanishing at every stage. Fails on any sanitizer report
# (memory errors, and leaks found at exit). Usage: bench/asan-relay.sh [sessions]
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
sessions="${1:-600}"
work="$(mktemp -d /tmp/cellar-asan-relay.XXXXXX)"
trap 'rm -rf "$work"' EXIT

libasan="$(gcc -print-file-name=libasan.so)"
if [ ! -e "$libasan" ]; then
  echo "asan-relay: libasan not found (gcc -print-file-name=libasan.so gave $libasan)" >&2
  exit 2
fi

mkdir -p "$work/addon"
cp -r "$root/native" "$root/binding.gyp" "$work/addon/"
# npm puts its own node-gyp on the PATH of a script, as it does for the real build (npm run install).
printf '{ "name": "cellar-relay-asan", "private": true, "scripts": { "build": "node-gyp rebuild" } }\n' >"$work/addon/package.json"
(
  cd "$work/addon"
  CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g -O1" LDFLAGS="-fsanitize=address" npm run build --silent >"$work/build.log" 2>&1
) || {
  cat "$work/build.log" >&2
  exit 2
}
addon="$work/addon/build/Release/relay.node"
if ! nm -D "$addon" | grep ' U __asan_init' >/dev/null; then
  echo "asan-relay: $addon was not built with AddressSanitizer" >&2
  exit 2
fi

# The certificate is made here, before libasan is preloaded: the churn starts no child process.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj '/CN=*.cellar.localhost' \
  -addext 'subjectAltName=DNS:*.cellar.localhost' -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

(cd "$root" && npm run build --silent >/dev/null)

status=0
LD_PRELOAD="$libasan" ASAN_OPTIONS="log_path=$work/asan:detect_leaks=1:halt_on_error=1:abort_on_error=0:symbolize=1" \
  node "$root/dist/bench/relay-churn.js" --addon "$addon" --cert "$work/cert.pem" --key "$work/key.pem" --sessions "$sessions" || status=$?

reports=("$work"/asan.*)
count=0
if [ -e "${reports[0]}" ]; then
  count=$(grep -l -E 'ERROR: (AddressSanitizer|LeakSanitizer)' "${reports[@]}" | wc -l)
fi
echo "asan-relay: churn exit status $status; processes with sanitizer reports: $count"
if [ "$count" -gt 0 ]; then
  cat "${reports[@]}" >&2
  exit 1
fi
exit "$status"
