#!/usr/bin/env bash
# Installs the task executor on this host (run as root from the repository):
#   deploy/install.sh            build in release mode, install binaries, bridge, units and example settings
#   deploy/install.sh --no-build install what target/release holds
# It never overwrites settings that exist in /etc/task-executor.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = "--no-build" ] || cargo build --release -p api-server -p worker-daemon -p task-executor-migration
install -m 0755 target/release/api-server target/release/worker-daemon target/release/task-executor /usr/local/bin/
install -m 0755 target/release/migrate /usr/local/bin/task-executor-migrate
install -d /usr/local/share/task-executor
install -m 0755 deploy/aiopslab_bridge.py /usr/local/share/task-executor/aiopslab_bridge.py
id task-executor >/dev/null 2>&1 || useradd --system --home-dir /var/lib/task-executor --create-home \
  --shell /usr/sbin/nologin task-executor
getent group docker >/dev/null && usermod -aG docker task-executor || true
install -d -m 0750 -o root -g task-executor /etc/task-executor
for f in api-server worker; do
  [ -e "/etc/task-executor/$f.env" ] || install -m 0640 -o root -g task-executor "deploy/env/$f.env" "/etc/task-executor/$f.env"
done
# Tokens: the API server's file of hashes with an admin token (deploy/token.sh server), and this host's
# worker token file for the daemons (empty until the token is put in it).
deploy/token.sh server
[ -e /etc/task-executor/worker.token ] || install -m 0600 -o root -g root /dev/null /etc/task-executor/worker.token
install -m 0755 deploy/token.sh /usr/local/share/task-executor/token.sh
install -m 0644 deploy/systemd/task-executor-api.service deploy/systemd/task-executor-worker@.service /etc/systemd/system/
systemctl daemon-reload 2>/dev/null || true
echo "Installed. Edit /etc/task-executor/*.env, then see deploy/README.md to start the services."
echo "The admin token is in /etc/task-executor/admin.token; a worker host's token comes from"
echo "/usr/local/share/task-executor/token.sh worker HOST (run on the API server host)."
