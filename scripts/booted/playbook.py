"""scripts/ansible/upgrade-cluster.yml over real SSH against booted nodes.

Every node gets openssh-server listening on 127.0.0.1:2200+i of the
cluster's network namespace and a key made for the run; the inventory
names the master (ivle_master) and the slaves (ivle_slaves) as the
playbook wants them, with each node's mount-namespace token in
ivle_environment (the stand-ins mount jails only in a node).
ansible-playbook runs on the host inside that network namespace.
(tests/booted/test_booted.py's test_cluster_ansible_over_ssh and
scripts/bench_cluster.py use it.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .scenario import REPO, Guest

PLAYBOOK = REPO / "scripts" / "ansible" / "upgrade-cluster.yml"


def inventory(guests: dict[str, Guest], work: Path) -> Path:
    """ssh into every node (names[0] the master) and the inventory file that says so."""
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    hosts = {}
    for i, (name, guest) in enumerate(guests.items()):
        port = 2200 + i
        guest.node.write("/etc/ssh/sshd_config.d/booted.conf",
                         f"Port {port}\nListenAddress 127.0.0.1\n")
        guest.node.write("/root/.ssh/authorized_keys", (work / "id_ed25519.pub").read_text(),
                         mode="0600")
        guest.node.run("systemctl", "enable", "--now", "ssh")
        hosts[name] = {"ansible_host": "127.0.0.1", "ansible_port": port,
                       "ivle_environment": dict([guest.sandbox_env.split("=", 1)])}
    master = next(iter(guests))
    path = work / "inventory.yml"
    path.write_text(json.dumps({"all": {
        "children": {
            "ivle_master": {"hosts": {master: hosts[master]}},
            "ivle_slaves": {"hosts": {n: h for n, h in hosts.items() if n != master}},
        },
        "vars": {"ansible_user": "root", "ivle_become": False,
                 "ansible_ssh_private_key_file": str(key),
                 "ansible_python_interpreter": "/usr/bin/python3",
                 "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                                            "-o UserKnownHostsFile=/dev/null"},
    }}))
    return path


def run(guests: dict[str, Guest], inventory_file: Path, *extra_vars: str,
        ) -> subprocess.CompletedProcess[str]:
    """ansible-playbook upgrade-cluster.yml -e ivle_version=1.1 -e EXTRA..., output captured."""
    work = inventory_file.parent
    netns = next(iter(guests.values())).node.netns
    # Ansible's own default: one ssh connection per node, reused by every
    # task and play (as an administrator's run does), in a socket of ours
    # so that the masters are ended with the run.
    # A short directory: a socket's path must fit in 108 bytes.
    control = Path(tempfile.mkdtemp(prefix="ivle-ssh-", dir="/tmp"))
    try:
        return subprocess.run(
            ["ip", "netns", "exec", netns, "ansible-playbook", "-i", str(inventory_file),
             str(PLAYBOOK), "-e", "ivle_version=1.1",
             *[a for v in extra_vars for a in ("-e", v)]],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900, check=False,
            env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1",
                 "ANSIBLE_SSH_ARGS": "-o ControlMaster=auto -o ControlPersist=60s",
                 "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
                 "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp")})
    finally:
        subprocess.run(["pkill", "-f", f"{control}/"], check=False)
        shutil.rmtree(control, ignore_errors=True)
