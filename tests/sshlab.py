"""A lab of "existing machines" for the ssh provider's tests: network namespaces that each run
their own sshd, reached from this (root) namespace over a management network of the lab's own.

Per host: a namespace `<prefix>-<host>`, a veth `<prefix>m<i>` in the root namespace whose peer
`mgmt` sits in the host (10.254.N.4i+1/30 here, .4i+2 there), sshd on the host's management
address with a generated host key, root login by key only. Data links are veths created inside
the namespaces (`d-<peer>`), without addresses: `testbed up` assigns them. Every root-namespace
object carries the prefix and is removed by stop().
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"

SSHD_CONFIG = """\
ListenAddress {address}
Port 22
HostKey {hostkey}
PidFile {pidfile}
AuthorizedKeysFile {authorized}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxSessions 100
MaxStartups 100
Subsystem sftp internal-sftp
LogLevel ERROR
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()}")
    return res


def keygen(path: Path, comment: str) -> str:
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))
    return Path(str(path) + ".pub").read_text().strip()


class SshLab:
    def __init__(self, prefix: str, root: Path, hosts: list[tuple[str, str]],
                 links: list[tuple[str, str]]) -> None:
        self.prefix, self.root = prefix, root
        self.hosts = dict(hosts)  # name -> role
        self.links = links
        self.net = self._free_net()
        self.sshd: dict[str, subprocess.Popen] = {}
        self.key = root / "user_key"
        self.known_hosts = root / "known_hosts"
        self.remote_dir = root / "remote"

    # ---- naming
    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def index(self, host: str) -> int:
        return list(self.hosts).index(host)

    def address(self, host: str) -> str:
        return f"10.254.{self.net}.{4 * self.index(host) + 2}"

    def root_veth(self, host: str) -> str:
        return f"{self.prefix}m{self.index(host)}"

    def iface(self, host: str, peer: str) -> str:
        return f"d-{peer}"

    def _free_net(self) -> int:
        used = sh("ip", "-4", "route").stdout
        for _ in range(50):
            n = random.randint(10, 250)
            if f"10.254.{n}." not in used:
                return n
        raise RuntimeError("no free 10.254.N.0/24 for the management network")

    # ---- building
    def start(self) -> SshLab:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        self.root.mkdir(parents=True, exist_ok=True)
        user_pub = keygen(self.key, "testbed-test-user")
        (self.root / "authorized_keys").write_text(user_pub + "\n")
        os.chmod(self.root / "authorized_keys", 0o600)
        lines = []
        for host in self.hosts:
            lines.append(f"{self.address(host)} {self._host(host)}")
        self.known_hosts.write_text("\n".join(lines) + "\n")
        for a, b in self.links:
            sh("ip", "link", "add", self.iface(a, b), "netns", self.ns(a), "type", "veth",
               "peer", "name", self.iface(b, a), "netns", self.ns(b))
        for host in self.hosts:
            self.wait_ssh(host)
        return self

    def _host(self, host: str) -> str:
        """Namespace, management link and sshd of one host; returns its host key line."""
        ns, i = self.ns(host), self.index(host)
        hdir = self.root / host
        hdir.mkdir()
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", self.root_veth(host), "type", "veth", "peer", "name", "mgmt", "netns", ns)
        sh("ip", "addr", "add", f"10.254.{self.net}.{4 * i + 1}/30", "dev", self.root_veth(host))
        sh("ip", "link", "set", self.root_veth(host), "up")
        sh("ip", "-n", ns, "addr", "add", f"{self.address(host)}/30", "dev", "mgmt")
        sh("ip", "-n", ns, "link", "set", "mgmt", "up")
        hostkey = hdir / "hostkey"
        pub = keygen(hostkey, f"{host}-hostkey")
        cfg = hdir / "sshd_config"
        cfg.write_text(SSHD_CONFIG.format(address=self.address(host), hostkey=hostkey,
                                          pidfile=hdir / "sshd.pid",
                                          authorized=self.root / "authorized_keys"))
        self.start_sshd(host)
        return " ".join(pub.split()[:2])

    def start_sshd(self, host: str, hostkey: Path | None = None) -> None:
        hdir = self.root / host
        self.sshd[host] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), SSHD, "-D", "-f", str(hdir / "sshd_config"),
             "-h", str(hostkey or hdir / "hostkey"), "-E", str(hdir / "sshd.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop_sshd(self, host: str) -> None:
        proc = self.sshd.pop(host, None)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            proc.wait(5)

    def wait_ssh(self, host: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.address(host), 22), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd of {host} did not start: {(self.root / host / 'sshd.log').read_text()}")

    def stop(self) -> None:
        for host in list(self.sshd):
            try:
                self.stop_sshd(host)
            except subprocess.TimeoutExpired:
                self.sshd[host].kill() if host in self.sshd else None
        for host in self.hosts:
            # processes a test left in the namespace (sshd sessions, daemons) go with it
            pids = sh("ip", "netns", "pids", self.ns(host), check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "link", "del", self.root_veth(host), check=False)
            sh("ip", "netns", "del", self.ns(host), check=False)

    # ---- what the tests look at
    def exec(self, host: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", self.ns(host), *argv, check=check)

    def snapshot(self, host: str) -> dict[str, str]:
        """What a testbed may change on a host, to compare before up and after down."""
        out = {
            "addr": self.exec(host, "ip", "-o", "-4", "addr", "show").stdout,
            "route": self.exec(host, "ip", "route", "show").stdout,
            "qdisc": "\n".join(line for line in self.exec(host, "tc", "qdisc", "show").stdout.splitlines()
                               if " root " in line and "noqueue" not in line),
            "mangle": self.exec(host, "iptables", "-t", "mangle", "-S").stdout,
            "filter": self.exec(host, "iptables", "-t", "filter", "-S").stdout,
            "sysctl": self.exec(host, "sysctl", "net.ipv4.ip_forward", "net.ipv4.tcp_ecn").stdout,
            "links": "\n".join(line.split("<")[1].split(">")[0] for line in
                               self.exec(host, "ip", "-o", "link", "show").stdout.splitlines()),
        }
        for a, b in self.links:
            for end, peer in ((a, b), (b, a)):
                if end == host:
                    feats = self.exec(host, "ethtool", "-k", self.iface(host, peer)).stdout
                    out[f"offload-{peer}"] = "\n".join(
                        line for line in feats.splitlines()
                        if line.split(":")[0] in ("tcp-segmentation-offload", "generic-segmentation-offload",
                                                  "generic-receive-offload"))
        return out

    def spec_yaml(self, name: str, bottleneck: str = "{rate: 50mbit, rtt: 20ms, buffer: 1.5bdp}",
                  extra_ssh: str = "", scenario: str = "", host_extra: dict[str, str] | None = None) -> str:
        host_extra = host_extra or {}
        lines = [f"name: {name}", "provider: ssh", "ssh:", f"  key_file: {self.key}",
                 f"  known_hosts: {self.known_hosts}", f"  remote_dir: {self.remote_dir}",
                 "  connect_timeout: 3s"]
        lines += [f"  {x}" for x in extra_ssh.splitlines() if x]
        lines.append("hosts:")
        for host, role in self.hosts.items():
            peers = [b if a == host else a for a, b in self.links if host in (a, b)]
            ifaces = ", ".join(f"{p}: {self.iface(host, p)}" for p in peers)
            # the system's python: interpreter discovery may find a pyenv shim that fails
            extra = ", python: /usr/bin/python3" + host_extra.get(host, "")
            lines.append(f"  - {{name: {host}, role: {role}, tcp: {{cc: cubic, ecn: 2}}, "
                         f"ssh: {{address: {self.address(host)}, interfaces: {{{ifaces}}}{extra}}}}}")
        lines.append("links:")
        for a, b in self.links:
            is_bn = self.hosts[a] == "router" and self.hosts[b] == "receiver"
            bn = f", bottleneck: {bottleneck}" if is_bn else ""
            lines.append(f"  - {{a: {a}, b: {b}{bn}}}")
        return "\n".join(lines) + "\n" + scenario
