"""The kernel's view of a server's TCP sockets, for comparing with what the server reports:
sockets on a port by state from /proc/net/tcp{,6} (optionally in another process's network
namespace), the ones a process still holds open, and per-socket memory and bytes accepted from
`ss`.

Run with Debian's interpreter (/usr/bin/python3); only the standard library is used.
"""

import re
import subprocess

from proc import socket_inodes

# TCP states in /proc/net/tcp (include/net/tcp_states.h).
TCP_ESTABLISHED = "01"
TCP_CLOSE_WAIT = "08"

TCP_STATES = {"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
              "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT",
              "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}


def kernel_sockets(port, state):
    """Sockets whose local port is `port` in TCP `state` (hex code), from /proc/net/tcp{,6}:
    the server side of connections as the kernel sees them."""
    return sum(1 for s in tcp_sockets(local_port=port) if s["state"] == state)


def tcp_sockets(local_port=None, remote_port=None):
    """TCP sockets from /proc/net/tcp{,6} filtered by ports: dicts with state (hex), local_port,
    remote_port, tx_queue and rx_queue (bytes)."""
    out = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    p = line.split()
                    lp = int(p[1].rsplit(":", 1)[1], 16)
                    rp = int(p[2].rsplit(":", 1)[1], 16)
                    if local_port is not None and lp != local_port:
                        continue
                    if remote_port is not None and rp != remote_port:
                        continue
                    tx, rx = p[4].split(":")
                    out.append({"state": p[3], "local_port": lp, "remote_port": rp,
                                "tx_queue": int(tx, 16), "rx_queue": int(rx, 16)})
        except FileNotFoundError:
            pass
    return out


def kernel_conn_table(port, proc_pid=None):
    """Server-side TCP sockets of `port` as the kernel sees them:
    {(remote_ip_hex, remote_port): (state_hex, inode)}. With `proc_pid`, reads that process's
    network namespace (/proc/<pid>/net/tcp)."""
    out = {}
    base = f"/proc/{proc_pid}/net" if proc_pid else "/proc/net"
    for name in ("tcp", "tcp6"):
        try:
            with open(f"{base}/{name}") as f:
                next(f)
                for line in f:
                    p = line.split()
                    lport = int(p[1].rsplit(":", 1)[1], 16)
                    if lport != port or p[3] == "0A":
                        continue
                    rip, rport = p[2].rsplit(":", 1)
                    out[(rip, int(rport, 16))] = (p[3], int(p[9]))
        except FileNotFoundError:
            pass
    return out


def listed_inodes():
    """Inodes of every socket the kernel lists in /proc/net (TCP, UDP, raw, unix, netlink)."""
    out = set()
    for name, col in (("tcp", 9), ("tcp6", 9), ("udp", 9), ("udp6", 9), ("raw", 9),
                      ("raw6", 9), ("unix", 6), ("netlink", 9)):
        try:
            with open(f"/proc/net/{name}") as f:
                next(f)
                for line in f:
                    p = line.split()
                    if len(p) > col and p[col].isdigit():
                        out.add(int(p[col]))
        except (FileNotFoundError, StopIteration):
            pass
    return out


def unlisted_sockets(pid):
    """Sockets process `pid` holds that the kernel no longer lists: TCP sockets in state CLOSE,
    which a reset took out of the connection tables before the process read the error. Such a
    socket is still one of the process's connections (its gauge counts it) until it reads
    the reset and closes it."""
    return socket_inodes(pid) - listed_inodes()


def held_by_state(port, pid):
    """Sockets on `port` (server side, not the listener) that process `pid` still holds open,
    counted by TCP state name."""
    inodes = socket_inodes(pid)
    out = {}
    for (st, inode) in kernel_conn_table(port).values():
        if inode in inodes:
            name = TCP_STATES.get(st, st)
            out[name] = out.get(name, 0) + 1
    return out


def ss_skmem(port, side="sport", netns=None):
    """Socket memory of established TCP sockets whose source (side="sport") or destination
    (side="dport") port is `port`, from `ss -tmn`: {peer_port: {"rb":…, "tb":…, "r":…, "w":…}}
    where peer_port is the other end's port (the client's port for sport, the local port of the
    client socket for dport)."""
    cmd = ["ss", "-tmnH", "state", "established", f"( {side} = :{port} )"]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True)
    out = {}
    lines = r.stdout.splitlines()
    cur = None
    for line in lines:
        m = re.search(r"(\S+):(\d+)\s+(\S+):(\d+)", line)
        if m:
            lp, pp = int(m.group(2)), int(m.group(4))
            cur = pp if side == "sport" else lp
        mm = re.search(r"skmem:\(([^)]*)\)", line)
        if mm and cur is not None:
            d = {}
            for part in mm.group(1).split(","):
                k = re.match(r"([a-z]+)(\d+)", part)
                if k:
                    d[k.group(1)] = int(k.group(2))
            out[cur] = d
            cur = None
    return out


def ss_accepted(port):
    """For each established server-side socket of `port`: how many bytes the kernel has
    accepted from the server process so far (first transmissions + bytes not yet sent:
    bytes_sent - bytes_retrans + notsent, from `ss -ti`). A socket whose count stops growing
    while the server still has data for it is what the write-stall timeout must detect.
    Returns {client_port: bytes}."""
    r = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                       capture_output=True, text=True)
    out = {}
    cur = None
    for line in r.stdout.splitlines():
        if not line.startswith(("\t", " ")):
            m = re.search(r":(\d+)\s*$", line.strip())
            cur = int(m.group(1)) if m else None
            continue
        if cur is None:
            continue
        sent = re.search(r"\bbytes_sent:(\d+)", line)
        retr = re.search(r"\bbytes_retrans:(\d+)", line)
        ns = re.search(r"\bnotsent:(\d+)", line)
        out[cur] = ((int(sent.group(1)) if sent else 0) - (int(retr.group(1)) if retr else 0)
                    + (int(ns.group(1)) if ns else 0))
        cur = None
    return out
