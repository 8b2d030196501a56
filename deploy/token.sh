#!/usr/bin/env bash
# API tokens for a deployment, kept as SHA-256 hashes in /etc/task-executor/tokens (the API server's
# TOKENS_FILE, reloaded every 2 s: no restart needed). Run as root on the API server host.
#   deploy/token.sh server        create the tokens file with an `admin` token, unless it exists; the token
#                                 itself goes to /etc/task-executor/admin.token (root only)
#   deploy/token.sh worker HOST   add a `worker` token for the daemons of HOST (worker ids HOST-*) and print
#                                 it: put it in HOST's /etc/task-executor/worker.token (mode 0600)
#   deploy/token.sh NAME ROLE     add a token of ROLE (read, submit, admin) and print it
# Tokens can also live in the database instead: `api-server token create|list|revoke` (see docs/operating.md).
# To revoke a token of this file, delete its line.
set -euo pipefail
dir=${TASK_EXECUTOR_ETC:-/etc/task-executor}
file=$dir/tokens
new_token() { echo "tex_$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"; }
hash_of() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
ensure_file() {
  [ -e "$file" ] && return 0
  install -d -m 0750 "$dir"
  umask 027
  printf '# API tokens: NAME ROLE sha256:HASH [WORKER_PATTERN] (deploy/token.sh adds lines)\n' >"$file"
  chgrp task-executor "$file" 2>/dev/null || true
}
add() { # name role [pattern] -> prints the token
  local name=$1 role=$2 pattern=${3:-} token
  if grep -q "^$name " "$file"; then echo "a token named $name exists in $file" >&2; exit 1; fi
  token=$(new_token)
  echo "$name $role sha256:$(hash_of "$token")${pattern:+ $pattern}" >>"$file"
  echo "$token"
}
case "${1:-}" in
  server)
    if [ -e "$file" ]; then echo "$file exists: nothing to do" >&2; exit 0; fi
    ensure_file
    umask 077
    add admin admin >"$dir/admin.token"
    echo "created $file with an admin token; the token is in $dir/admin.token (readable by root only)" >&2
    ;;
  worker)
    host=${2:?usage: deploy/token.sh worker HOST}
    ensure_file
    add "$host" worker "$host-*"
    echo "worker token of $host (worker ids $host-*) added to $file: put the line above in $host's $dir/worker.token" >&2
    ;;
  "" | -h | --help)
    sed -n '2,11p' "$0"
    ;;
  *)
    name=$1 role=${2:?usage: deploy/token.sh NAME ROLE}
    case "$role" in read | submit | admin) ;; *) echo "role: read, submit or admin" >&2; exit 2 ;; esac
    ensure_file
    add "$name" "$role"
    ;;
esac
