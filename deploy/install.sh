#!/bin/sh
# Install cxrd as a systemd service: user `cxrd`, code in /opt/cxrd (venv), configuration and master
# key in /etc/cxrd, state in /var/lib/cxrd. Idempotent: running it again upgrades the code and keeps
# configuration, keys and state. Run from the source tree as root:  sudo deploy/install.sh
#
# Options: --no-start (install and enable, do not start)   --prefix DIR (default /opt/cxrd)
# Uninstall (keeps state, keys and configuration unless you remove them yourself):
#   systemctl disable --now cxrd && rm /etc/systemd/system/cxrd.service && systemctl daemon-reload
#   rm -rf /opt/cxrd            # code
#   rm -rf /var/lib/cxrd /etc/cxrd && userdel cxrd   # ONLY if images, audit trail and keys must go
set -eu

PREFIX=/opt/cxrd
START=yes
# The distribution's Python: the service user must be able to run it (a pyenv build under /root is
# not), and `apt-get install python3-venv` provides venv where it is missing.
PYTHON=${PYTHON:-/usr/bin/python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --no-start) START=no ;;
        --prefix) PREFIX="$2"; shift ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
SRC=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

# 1. system user (no login, no home)
if ! id cxrd >/dev/null 2>&1; then
    useradd --system --user-group --no-create-home --home-dir /var/lib/cxrd --shell /usr/sbin/nologin cxrd
fi

# 2. code: a copy of the source and a virtual environment built from it
mkdir -p "$PREFIX"
rm -rf "$PREFIX/src.new"
mkdir "$PREFIX/src.new"
(cd "$SRC" && tar --exclude=.venv --exclude=.git --exclude=var --exclude='__pycache__' -cf - .) | tar -C "$PREFIX/src.new" -xf -
rm -rf "$PREFIX/src" && mv "$PREFIX/src.new" "$PREFIX/src"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || { echo "install.sh: $PYTHON cannot create virtual environments (apt-get install python3-venv)" >&2; exit 1; }
home=$(dirname "$(readlink -f "$PYTHON")")
if [ -f "$PREFIX/venv/pyvenv.cfg" ] && ! grep -qx "home = $home" "$PREFIX/venv/pyvenv.cfg"; then
    rm -rf "$PREFIX/venv"   # built with another Python: rebuild
fi
[ -x "$PREFIX/venv/bin/python" ] || "$PYTHON" -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install --quiet --disable-pip-version-check "$PREFIX/src"

# 3. configuration and master key (kept if present)
install -d -m 0755 /etc/cxrd
[ -f /etc/cxrd/cxrd.toml ] || install -m 0644 "$SRC/deploy/cxrd.example.toml" /etc/cxrd/cxrd.toml
install -d -m 0700 -o cxrd -g cxrd /var/lib/cxrd
# `cxrd init` creates the key (0600, root: systemd hands it to the service as a credential),
# the schema and the keyring; then the state directory is handed to the service user.
CXRD_SECURITY__KEY_FILE=/etc/cxrd/master.key CXRD_STORAGE__STATE_DIR=/var/lib/cxrd \
    "$PREFIX/venv/bin/cxrd" init --config /etc/cxrd/cxrd.toml
chown -R cxrd:cxrd /var/lib/cxrd
chmod 0600 /etc/cxrd/master.key
chown cxrd:cxrd /etc/cxrd/master.key   # read by `sudo -u cxrd cxrd ...` (docs/compliance.md)

# 4. the unit
sed "s#/opt/cxrd/#$PREFIX/#g" "$SRC/deploy/cxrd.service" > /etc/systemd/system/cxrd.service
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable cxrd.service
    [ "$START" = yes ] && systemctl restart cxrd.service
    systemctl --no-pager status cxrd.service || true
else
    echo "install.sh: systemd is not running here; unit installed, start it with systemctl on the target host" >&2
fi
