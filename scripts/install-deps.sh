#!/usr/bin/env bash
# Installs the Debian packages mailsync's tests and demo need, when missing.
# Non-interactive, and without starting the packaged system services: the tests
# and the demo start their own slapd, Dovecot and Postfix tools in temp dirs.
set -euo pipefail

pkgs=(slapd ldap-utils dovecot-core dovecot-imapd dovecot-lmtpd dovecot-ldap postfix postfix-ldap postfix-lmdb postfix-cdb 389-ds-base procps make systemd)
bins=(/usr/sbin/slapd /usr/bin/ldapsearch /usr/sbin/dovecot /usr/lib/dovecot/imap /usr/lib/dovecot/lmtp /usr/lib/dovecot/modules/auth/libauthdb_ldap.so /usr/sbin/postmap /usr/lib/postfix/postfix-ldap.so /usr/sbin/ns-slapd /usr/bin/pkill /usr/lib/postfix/postfix-lmdb.so /usr/lib/postfix/postfix-cdb.so /usr/bin/systemd-analyze)

missing=0
for b in "${bins[@]}"; do [ -e "$b" ] || missing=1; done
[ "$missing" = 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "missing packages; run as root: apt-get install -y ${pkgs[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# Keep maintainer scripts from starting system services (exit 101 = action forbidden).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT

echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
echo "slapd slapd/no_configuration boolean true" | debconf-set-selections

apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
# Packaged daemons must not hold the ports or files the tests use.
for s in slapd dovecot postfix; do
  (command -v systemctl >/dev/null && systemctl stop "$s" 2>/dev/null) || true
done
pkill -x slapd 2>/dev/null || true
pkill -x dovecot 2>/dev/null || true
echo "installed: ${pkgs[*]}"
