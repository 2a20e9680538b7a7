#!/usr/bin/env bash
# A loopback "remote host" for the cluster launcher test: sshd on 127.0.0.1:22 that lets
# root in with a generated key. Idempotent: does nothing when that key already gets in.
#
# sshd runs in its own PID namespace (and /proc) when `unshare` works, so a command run
# through it, such as the `ray stop` that `ray down` runs on the head, sees and stops only
# the processes started through it, never the other Ray instances on this machine.
#
#   FLEET_CI_SSH_KEY  private key to create and authorize (default ~/.ssh/fleet-ci-ed25519)
#
# Prints the key path on its last line.
set -euo pipefail

KEY="${FLEET_CI_SSH_KEY:-$HOME/.ssh/fleet-ci-ed25519}"
CONF=/etc/ssh/fleet-ci-sshd_config
LOG=/var/log/fleet-ci-sshd.log

if [ "$(id -u)" != 0 ]; then
    echo "ci-sshd: must run as root" >&2
    exit 1
fi

logs_in() {
    ssh -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ConnectTimeout=5 -o LogLevel=ERROR root@127.0.0.1 true 2>/dev/null
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

# 2. The key, authorized for root.
mkdir -p "$HOME/.ssh" "$(dirname "$KEY")"
chmod 700 "$HOME/.ssh"
[ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N '' -C fleet-ci -f "$KEY"
touch "$HOME/.ssh/authorized_keys"
chmod 600 "$HOME/.ssh/authorized_keys"
grep -qxF "$(cat "$KEY.pub")" "$HOME/.ssh/authorized_keys" || cat "$KEY.pub" >>"$HOME/.ssh/authorized_keys"

if logs_in; then
    echo "ci-sshd: sshd on 127.0.0.1:22 already lets the key in"
    echo "$KEY"
    exit 0
fi

# 3. sshd on loopback only, keys only.
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
echo "ci-sshd: sshd did not let the key in; see $LOG" >&2
exit 1
