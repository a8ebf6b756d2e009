"""Runs demo/app.py (arguments passed on) with a socket guard: a name lookup of any host but
this machine, or a connection to any address but the loopback, is refused and recorded, one
line each, in the file named by $MASKCLIP_NETWORK_LOG. The browser test asserts it stays
empty."""
import os
import runpy
import socket
import sys

LOOPBACK = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::", ""}
LOG = os.environ["MASKCLIP_NETWORK_LOG"]
_connect, _connect_ex, _getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo


def _record(what):
    with open(LOG, "a") as f:
        f.write(what + "\n")


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and str(address[0]) not in LOOPBACK:
        _record(f"connect {address}")
        raise OSError(f"network access to {address} blocked by the test's socket guard")


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host if host is not None else "")
    if name not in LOOPBACK:
        _record(f"getaddrinfo {name}")
        raise socket.gaierror(socket.EAI_NONAME, f"name lookup of {name} blocked by the test's socket guard")
    return _getaddrinfo(host, *args, **kwargs)


socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo

if __name__ == "__main__":
    app = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "demo", "app.py")
    sys.argv = [app, *sys.argv[1:]]
    runpy.run_path(app, run_name="__main__")
