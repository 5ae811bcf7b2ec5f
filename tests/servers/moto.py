"""The recipe for moto's HTTP server (S3, SQS, … on one port), run from the current venv.

Job: give the command line that runs the server and probe it with a real HTTP request.
Holds no process state: ``services.MotoServer`` owns the process.  moto keeps its state in
memory only, so a restart starts empty.
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

MARKER = "moto"  # appears in the server's command line


def server_command(host: str, port: int) -> list[str]:
    """``moto_server`` from this interpreter's environment, else ``python -m moto.server``."""
    script = Path(sys.prefix) / "bin" / "moto_server"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*launcher, "-H", host, "-p", str(port)]


def answers(endpoint_url: str) -> bool:
    """True if moto's own API answers an HTTP GET right now (proxy settings bypassed)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{endpoint_url}/moto-api/", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False
