#!/usr/bin/env bash
# make demo: real servers on loopback (slapd, Dovecot, a Postfix configured by
# mailsync), a sample directory, mailsync syncing them, real mail sent over
# SMTP and read over IMAP, live changes and what they do. Ctrl-C stops and
# cleans up.
#
# The demo's servers run in temp dirs on random loopback ports, so packaged
# slapd, Dovecot or Postfix services on the host are never in the way and
# never touched; the demo ends only the processes it started, by PID.
set -uo pipefail
cd "$(dirname "$0")/.."
export PATH=/usr/local/go/bin:$PATH
bindir=${MAILSYNC_DEMO_BIN_DIR:-$PWD/bin}
export MAILSYNC_BIN=${MAILSYNC_BIN:-$bindir/mailsync}
# Ctrl-C is the demo's own to handle (it stops its servers and cleans up);
# this script and the output filter outlive it to report how it went.
trap '' INT
mkdir -p "$bindir"
go test -c -o "$bindir/demo.test" ./internal/demo || exit 1
(cd internal/demo && exec "$bindir/demo.test" -test.run '^TestDemo$' -test.v -test.timeout 0 -interactive) \
  > >(grep --line-buffered -v -E '^(=== RUN|--- PASS|PASS$|ok )') 2>&1 &
pid=$!
# A SIGTERM or SIGHUP sent to this script alone is passed on to the demo,
# by its PID, so it cleans up as on Ctrl-C.
trap 'kill -TERM "$pid" 2>/dev/null' TERM HUP
while :; do
  wait "$pid"
  status=$?
  # wait returns early (>128) when a trapped signal arrives; the demo still runs.
  kill -0 "$pid" 2>/dev/null || break
done
wait # the output filter
[ "$status" = 0 ] && echo "== demo finished cleanly" || echo "== demo failed (exit $status)"
exit "$status"
