#!/usr/bin/env bash
# Installs the Debian packages mailsync's tests and demo need, when missing.
#
# It leaves the host as it found it: only packages that are not installed are
# installed; debconf answers are preseeded only for packages about to be
# installed; no system service is stopped and no process is signalled (the
# tests and the demo start their own slapd, Dovecot and Postfix in temp dirs
# on random loopback ports, and end them by PID). While apt-get runs, a
# policy-rc.d keeps maintainer scripts from starting the new packages'
# services; it is created only when there is none and removed on every exit,
# a signal's too.
set -euo pipefail

pkgs=(slapd ldap-utils dovecot-core dovecot-imapd dovecot-lmtpd dovecot-ldap postfix postfix-ldap postfix-lmdb postfix-cdb 389-ds-base procps make systemd)
# Postfix's SMTP client authenticates to a relay host (mail/relayauth) with Cyrus SASL's PLAIN/LOGIN modules.
pkgs+=(libsasl2-modules)
# Where policy-rc.d lives; tests point it at a temp file.
policy=${MAILSYNC_POLICY_RC_D:-/usr/sbin/policy-rc.d}
marker='# written by mailsync scripts/install-deps.sh'

if ! command -v dpkg-query >/dev/null; then
  echo "not a Debian system (no dpkg-query); install: ${pkgs[*]}" >&2
  exit 1
fi

# Packages dpkg reports as installed ("ii"); all others are missing.
declare -A installed=()
while read -r name status; do
  [ "$status" = ii ] && installed[${name%%:*}]=1
done < <(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${pkgs[@]}" 2>/dev/null || true)
missing=()
for p in "${pkgs[@]}"; do
  [ -n "${installed[$p]:-}" ] || missing+=("$p")
done
[ "${#missing[@]}" = 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "missing packages; run as root: apt-get install -y ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Keep maintainer scripts from starting system services (exit 101 = action
# forbidden). One left behind by an earlier run of this script that was
# killed outright (SIGKILL) carries the marker and is ours to remove.
created_policy=0
cleanup() {
  if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi
}
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
if [ ! -e "$policy" ]; then
  # noclobber: never overwrite one that appeared meanwhile.
  (set -C; printf '#!/bin/sh\n%s\nexit 101\n' "$marker" >"$policy")
  created_policy=1
  chmod 755 "$policy"
elif grep -qxF "$marker" "$policy" 2>/dev/null; then
  created_policy=1
fi

# Preseed only packages about to be installed: an installed package's answers
# belong to its administrator.
want() {
  local p
  for p in "${missing[@]}"; do [ "$p" = "$1" ] && return 0; done
  return 1
}
if want postfix; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
fi
if want slapd; then
  echo "slapd slapd/no_configuration boolean true" | debconf-set-selections
fi

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
