#!/bin/sh
# Install cxrd as a systemd service: user `cxrd`, code in /opt/cxrd (venv), configuration, master key
# and database password in /etc/cxrd, state in /var/lib/cxrd. Idempotent: running it again upgrades
# the code and keeps configuration, keys and state. Run from the source tree as root:
#     sudo deploy/install.sh
#
# Options:
#   --no-start      install and enable, do not start
#   --console       also enable (and, unless --no-start, start) the web console, cxrd-console.service
#                   (installed either way; by default it listens on 127.0.0.1:8443 only)
#   --prefix DIR    where the code goes (default /opt/cxrd)
#   --root DIR      stage the whole installation under DIR (packaging, tests): every path above is
#                   taken inside DIR, no user is created and systemd is not touched
#   --user NAME     the service account (default cxrd; created if missing, unless --root)
#   --venv DIR      use this existing virtual environment (cxrd installed in it) instead of
#                   building one in PREFIX/venv (hosts without a package index)
#
# What only root and the service may read: /etc/cxrd (0750 root:cxrd), cxrd.toml (0640 root:cxrd),
# master.key and db-password (0400 owned by the service user: systemd hands both to the daemon as
# credentials, and `sudo -u cxrd cxrd ...` (docs/compliance.md) reads them so that the audit trail
# names the person by their login uid; the daemon holds the key in memory anyway).
# Root never writes inside the state directory: `cxrd init` runs as the service user, with the key
# handed over the way systemd does it (a private credentials directory, removed afterwards).
#
# Uninstall (keeps state, keys and configuration unless you remove them yourself):
#   systemctl disable --now cxrd cxrd-console
#   rm /etc/systemd/system/cxrd.service /etc/systemd/system/cxrd-console.service && systemctl daemon-reload
#   rm -rf /opt/cxrd            # code
#   rm -rf /var/lib/cxrd /etc/cxrd && userdel cxrd   # ONLY if images, audit trail and keys must go
set -eu

PREFIX=/opt/cxrd
START=yes
CONSOLE=no
ROOT=
SVC_USER=cxrd
VENV=
# The distribution's Python: the service user must be able to run it (a pyenv build under /root is
# not), and `apt-get install python3-venv` provides venv where it is missing.
PYTHON=${PYTHON:-/usr/bin/python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --no-start) START=no ;;
        --console) CONSOLE=yes ;;
        --prefix) PREFIX="$2"; shift ;;
        --root) ROOT=$(cd "$2" && pwd); shift ;;
        --user) SVC_USER="$2"; shift ;;
        --venv) VENV=$(cd "$2" && pwd); shift ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
SRC=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }
ETC="$ROOT/etc/cxrd"
STATE="$ROOT/var/lib/cxrd"
UNIT_DIR="$ROOT/etc/systemd/system"

# 1. system user (no login, no home)
if ! id "$SVC_USER" >/dev/null 2>&1; then
    [ -z "$ROOT" ] || { echo "install.sh: user $SVC_USER does not exist (--root creates no user)" >&2; exit 1; }
    useradd --system --user-group --no-create-home --home-dir /var/lib/cxrd --shell /usr/sbin/nologin "$SVC_USER"
fi
SVC_GROUP=$(id -gn "$SVC_USER")

# 2. code: a copy of the source and a virtual environment built from it
mkdir -p "$ROOT$PREFIX"
rm -rf "$ROOT$PREFIX/src.new"
mkdir "$ROOT$PREFIX/src.new"
(cd "$SRC" && tar --exclude=.venv --exclude=.git --exclude=var --exclude='__pycache__' -cf - .) | tar -C "$ROOT$PREFIX/src.new" -xf -
rm -rf "$ROOT$PREFIX/src" && mv "$ROOT$PREFIX/src.new" "$ROOT$PREFIX/src"
if [ -z "$VENV" ]; then
    VENV="$ROOT$PREFIX/venv"
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || { echo "install.sh: $PYTHON cannot create virtual environments (apt-get install python3-venv)" >&2; exit 1; }
    home=$(dirname "$(readlink -f "$PYTHON")")
    if [ -f "$VENV/pyvenv.cfg" ] && ! grep -qx "home = $home" "$VENV/pyvenv.cfg"; then
        rm -rf "$VENV"   # built with another Python: rebuild
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$ROOT$PREFIX/src"
fi
[ -x "$VENV/bin/cxrd" ] || { echo "install.sh: $VENV/bin/cxrd not found" >&2; exit 1; }

# 3. configuration, database password and master key (kept if present; modes corrected on upgrade)
install -d -m 0750 -o root -g "$SVC_GROUP" "$ETC"
chown "root:$SVC_GROUP" "$ETC" && chmod 0750 "$ETC"
if [ -f "$ETC/cxrd.toml" ]; then
    if [ -n "$(find "$ETC/cxrd.toml" -perm /0007)" ]; then
        echo "install.sh: $ETC/cxrd.toml was readable by every user: now 0640 root:$SVC_GROUP" >&2
    fi
    chown "root:$SVC_GROUP" "$ETC/cxrd.toml" && chmod 0640 "$ETC/cxrd.toml"
else
    install -m 0640 -o root -g "$SVC_GROUP" "$SRC/deploy/cxrd.example.toml" "$ETC/cxrd.toml"
fi
# The PostgreSQL password, if any, goes here (first line), not into cxrd.toml. Empty = none
# (SQLite, or a server that authenticates the service otherwise).
[ -f "$ETC/db-password" ] || install -m 0400 -o "$SVC_USER" -g "$SVC_GROUP" /dev/null "$ETC/db-password"
chown "$SVC_USER:$SVC_GROUP" "$ETC/db-password" && chmod 0400 "$ETC/db-password"
# The console's LDAP service account password, if directory sign-in is used (first line; empty = none).
[ -f "$ETC/ldap-password" ] || install -m 0400 -o "$SVC_USER" -g "$SVC_GROUP" /dev/null "$ETC/ldap-password"
chown "$SVC_USER:$SVC_GROUP" "$ETC/ldap-password" && chmod 0400 "$ETC/ldap-password"
# The key is created by root in /etc/cxrd; nothing here touches the state directory.
"$VENV/bin/python" -c 'import sys; from storage.keys import create_key_file; create_key_file(sys.argv[1])' "$ETC/master.key"
chown "$SVC_USER:$SVC_GROUP" "$ETC/master.key" && chmod 0400 "$ETC/master.key"

# 4. state: the directory belongs to the service user; `cxrd init` fills it as that user.
[ -d "$STATE" ] || install -d -m 0700 -o "$SVC_USER" -g "$SVC_GROUP" "$STATE"
chown "$SVC_USER:$SVC_GROUP" "$STATE" && chmod 0700 "$STATE"
RUNDIR=/run
[ -w "$RUNDIR" ] || RUNDIR=${TMPDIR:-/tmp}
CREDS=$(mktemp -d "$RUNDIR/cxrd-install.XXXXXX")
trap 'rm -rf "$CREDS"' EXIT INT TERM
install -m 0400 -o "$SVC_USER" -g "$SVC_GROUP" "$ETC/master.key" "$CREDS/cxrd.key"
if [ -s "$ETC/db-password" ]; then
    install -m 0400 -o "$SVC_USER" -g "$SVC_GROUP" "$ETC/db-password" "$CREDS/cxrd.dbpass"
fi
chown "$SVC_USER:$SVC_GROUP" "$CREDS"
(cd / && runuser -u "$SVC_USER" -- env CREDENTIALS_DIRECTORY="$CREDS" CXRD_STORAGE__STATE_DIR="$STATE" \
    "$VENV/bin/cxrd" --config "$ETC/cxrd.toml" init)
rm -rf "$CREDS"

# 5. the units: the daemon, and the web console beside it (same user, configuration and keys)
mkdir -p "$UNIT_DIR"
for unit in cxrd.service cxrd-console.service; do
    sed -e "s#/opt/cxrd/venv/#${VENV#"$ROOT"}/#g" -e "s#/opt/cxrd/#$PREFIX/#g" -e "s#^User=cxrd\$#User=$SVC_USER#" -e "s#^Group=cxrd\$#Group=$SVC_GROUP#" \
        "$SRC/deploy/$unit" > "$UNIT_DIR/$unit"
done
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable cxrd.service
    [ "$START" = yes ] && systemctl restart cxrd.service
    if [ "$CONSOLE" = yes ]; then
        systemctl enable cxrd-console.service
        [ "$START" = yes ] && systemctl restart cxrd-console.service
    fi
    systemctl --no-pager status cxrd.service || true
elif [ -z "$ROOT" ]; then
    echo "install.sh: systemd is not running here; unit installed, start it with systemctl on the target host" >&2
fi
