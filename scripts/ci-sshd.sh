#!/usr/bin/env bash
# A loopback "remote host" for the cluster launcher test: sshd on 127.0.0.1:22 that lets
# root in with a generated key. Idempotent: does nothing when that key already gets in.
#
# sshd runs in its own PID namespace (and /proc) when `unshare` works, so a command run
# through it, such as the `ray stop` that `ray down` runs on the head, sees and stops only
# the processes started through it, never the other Ray instances on this machine.
#
# The key is authorized with a forced command that gives its sessions a home of their own,
# FLEET_CI_SSH_HOME: the `~` of cluster.yaml on this "remote" head (~/agent-fleet,
# ~/.ray/auth_token, ~/.bashrc, the project its setup commands install) is there, never in
# root's real home. The launcher test writes that home's .bashrc and wipes it afterwards.
#
#   FLEET_CI_SSH_KEY   private key to create and authorize (default ~/.ssh/fleet-ci-ed25519)
#   FLEET_CI_SSH_HOME  the sessions' home (default /var/lib/fleet-ci)
#
# Prints the key path on its last line.
set -euo pipefail

KEY="${FLEET_CI_SSH_KEY:-$HOME/.ssh/fleet-ci-ed25519}"
NODE_HOME="${FLEET_CI_SSH_HOME:-/var/lib/fleet-ci}"
SESSION=/usr/local/libexec/fleet-ci-ssh-session
CONF=/etc/ssh/fleet-ci-sshd_config
LOG=/var/log/fleet-ci-sshd.log

if [ "$(id -u)" != 0 ]; then
    echo "ci-sshd: must run as root" >&2
    exit 1
fi

logs_in() {
    # shellcheck disable=SC2029  # $NODE_HOME is meant to expand here
    ssh -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=5 -o LogLevel=ERROR root@127.0.0.1 "test ~ = $NODE_HOME" 2>/dev/null
}

# 1. Packages: sshd, the ssh client, and rsync (the cluster launcher syncs files with it).
missing=()
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v ssh >/dev/null || missing+=(openssh-client)
command -v rsync >/dev/null || missing+=(rsync)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "ci-sshd: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. The sessions' home and the forced command that moves them there.
mkdir -p "$NODE_HOME" "$(dirname "$SESSION")"
chmod 700 "$NODE_HOME"
touch "$NODE_HOME/.fleet-ci-home" # the test wipes only a home with this marker
printf '%s\n' '#!/bin/sh' \
    "# Forced command of the fleet-ci key (scripts/ci-sshd.sh): the session's home is $NODE_HOME." \
    "HOME='$NODE_HOME'" \
    'export HOME' \
    'cd "$HOME" || exit 1' \
    'exec /bin/bash -c "${SSH_ORIGINAL_COMMAND:-exec /bin/bash -l}"' >"$SESSION.new"
chmod 755 "$SESSION.new"
mv "$SESSION.new" "$SESSION"

# 3. The key, authorized for root with that forced command (authorized_keys is read at
#    each login, so a running sshd needs no restart).
mkdir -p "$HOME/.ssh" "$(dirname "$KEY")"
chmod 700 "$HOME/.ssh"
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C fleet-ci -f "$KEY"
AUTH="$HOME/.ssh/authorized_keys"
touch "$AUTH"
chmod 600 "$AUTH"
pub=$(cut -d' ' -f2 "$KEY.pub")
if [ -z "$pub" ]; then
    echo "ci-sshd: cannot read $KEY.pub" >&2
    exit 1
fi
line="command=\"$SESSION\" $(cat "$KEY.pub")"
if ! grep -qxF "$line" "$AUTH"; then
    # Replace any older line for this key (sshd uses the first line that matches a key).
    { grep -vF "$pub" "$AUTH" || true; } >"$AUTH.new"
    printf '%s\n' "$line" >>"$AUTH.new"
    chmod 600 "$AUTH.new"
    mv "$AUTH.new" "$AUTH"
fi

if logs_in; then
    echo "ci-sshd: sshd on 127.0.0.1:22 already lets the key in (home $NODE_HOME)"
    echo "$KEY"
    exit 0
fi

# 4. sshd on loopback only, keys only.
ssh-keygen -A >/dev/null
mkdir -p /run/sshd
cat >"$CONF" <<EOF
ListenAddress 127.0.0.1
Port 22
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PidFile /run/fleet-ci-sshd.pid
Subsystem sftp internal-sftp
EOF
/usr/sbin/sshd -t -f "$CONF"

if unshare --pid --fork --mount-proc true 2>/dev/null; then
    # PID 1 of the namespace must reap orphans (Ray daemonizes): a tiny Python init.
    # (The PidFile then holds a PID of that namespace: never kill by it from outside.)
    init='import os, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
while True:
    pid, status = os.wait()
    if pid == child.pid:
        sys.exit(os.waitstatus_to_exitcode(status))'
    python=$(command -v python3 || echo /usr/bin/python3)
    setsid unshare --pid --fork --mount-proc --kill-child \
        "$python" -c "$init" /usr/sbin/sshd -D -e -f "$CONF" >"$LOG" 2>&1 </dev/null &
    echo "ci-sshd: started sshd in its own PID namespace (log: $LOG)"
else
    /usr/sbin/sshd -E "$LOG" -f "$CONF"
    echo "ci-sshd: started sshd (no PID namespace: unshare is not allowed here)"
fi

for _ in $(seq 50); do
    if logs_in; then
        echo "$KEY"
        exit 0
    fi
    sleep 0.2
done
echo "ci-sshd: sshd did not let the key in (or not with home $NODE_HOME); see $LOG" >&2
exit 1
