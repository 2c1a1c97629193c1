#!/usr/bin/env bash
# make demo: real servers on 127.0.0.1, a sample directory, mailsync syncing
# them, live changes and what they do. Ctrl-C stops and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
export MAILSYNC_BIN="$PWD/bin/mailsync"
exec go test -count=1 -run '^TestDemo$' -v ./internal/demo -timeout 0 -args -interactive 2>&1 \
  | grep -v -E '^(=== RUN|--- PASS|PASS$|ok )'
