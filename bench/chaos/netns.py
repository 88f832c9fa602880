"""Network namespaces for clients whose network can be made to vanish: a namespace joined to
the root namespace by a veth pair, whose link can be cut so that nothing reaches the clients in
it and nothing comes back (no FIN, no RST). Needs root and `ip`.

Run with Debian's interpreter (/usr/bin/python3); only the standard library is used.
"""

import os
import shutil
import subprocess


class NetNS:
    """A network namespace joined to the root namespace by a veth pair, for clients whose
    traffic can then be cut (`cut()`: the namespace's end of the link goes down, so nothing
    reaches them and nothing comes back; no FIN, no RST). Only addresses inside the namespace
    and on the two veth ends created here are touched (10.231.x.y/30); inside, ephemeral ports
    are 20000-29999. `NetNS.create()` returns (ns, None) or (None, reason) when namespaces
    cannot be used here (not root, no `ip`, no permission); destroy() removes both."""

    def __init__(self, tag):
        self.name = f"sluice-chaos-{tag}"
        self.host_if = f"slc{tag}h"[:15]
        self.peer_if = f"slc{tag}p"[:15]
        n = int(tag) % 16384
        self.host_ip = f"10.231.{n >> 6}.{(n & 63) * 4 + 1}"
        self.peer_ip = f"10.231.{n >> 6}.{(n & 63) * 4 + 2}"
        self.created = False

    def _run(self, *cmd, ns=False):
        full = (["ip", "netns", "exec", self.name] if ns else []) + list(cmd)
        r = subprocess.run(full, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(full)}: {r.stderr.strip()}")
        return r.stdout

    @classmethod
    def create(cls, tag=None):
        if os.geteuid() != 0:
            return None, "not root"
        if shutil.which("ip") is None:
            return None, "no ip command"
        ns = cls(tag if tag is not None else os.getpid() % 100000)
        try:
            ns._run("ip", "netns", "add", ns.name)
            ns.created = True
            ns._run("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.peer_if)
            ns._run("ip", "link", "set", ns.peer_if, "netns", ns.name)
            ns._run("ip", "addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
            ns._run("ip", "link", "set", ns.host_if, "up")
            ns._run("ip", "addr", "add", f"{ns.peer_ip}/30", "dev", ns.peer_if, ns=True)
            ns._run("ip", "link", "set", ns.peer_if, "up", ns=True)
            ns._run("ip", "link", "set", "lo", "up", ns=True)
            # Client ports inside the namespace never collide with client ports on loopback,
            # so a client port alone names a connection on the server's side.
            ns._run("sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 29999", ns=True)
        except (RuntimeError, OSError) as e:
            ns.destroy()
            return None, str(e)
        return ns, None

    def cmd_prefix(self):
        """Prefix a command with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def cut(self):
        self._run("ip", "link", "set", self.peer_if, "down", ns=True)

    def destroy(self):
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self.created = False
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
