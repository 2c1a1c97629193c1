#!/usr/bin/env bash
# make demo: real servers on 127.0.0.1, a sample directory, mailsync syncing
# them, live changes and what they do. Ctrl-C stops and cleans up.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
export MAILSYNC_BIN="$PWD/bin/mailsync"
# Ctrl-C is the demo's own to handle (it stops its servers and cleans up);
# this script and the output filter outlive it to report how it went.
trap '' INT
mkdir -p bin
go test -c -o bin/demo.test ./internal/demo || exit 1
(cd internal/demo && ../../bin/demo.test -test.run '^TestDemo$' -test.v -test.timeout 0 -interactive) 2>&1 \
  | grep --line-buffered -v -E '^(=== RUN|--- PASS|PASS$|ok )'
status=${PIPESTATUS[0]}
[ "$status" = 0 ] && echo "== demo finished cleanly" || echo "== demo failed (exit $status)"
exit "$status"
