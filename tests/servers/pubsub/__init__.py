"""The recipe for a Pub/Sub test server: Google's in-memory fake ``pstest`` built from Go.

Job: build ``main.go`` (a thin ``main`` around ``cloud.google.com/go/pubsub/v2/pstest``) into
a binary, give the command line that runs it, and probe it with a real gRPC request.  Holds
no process state: ``services.PubSubServer`` drives these steps and owns the process.

Invariants:
- The binary is rebuilt only when ``main.go``, ``go.mod`` or ``go.sum`` change (a stamp file
  next to it records their hash).  Modules and the build cache live under the state dir
  (``go/``), so a clean clone builds reproducibly; ``go.sum`` is committed (``-mod=readonly``).
- The module cache is kept writable (``-modcacherw``) so the state dir can be deleted.
- The server keeps its state only in memory: a restart starts with no topics, and message
  ids (``m0``, ``m1``, …) start again from ``m0``.
- pstest delivers StreamingPull messages on a fixed 10 ms tick (not configurable), one
  message per open stream per tick: ≈ 90 msgs/s per stream.  Unary Pull is not tick-bound.
  A functional fake, never a load target.
- ``main.go`` exposes ``-stream-timeout`` (pstest's ``SetStreamTimeout``: close every
  StreamingPull after that long, like the real service's 30-minute limit); off by default.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("main.go", "go.mod", "go.sum")
BINARY_NAME = "pstest"  # appears in the server's command line


class RecipeError(RuntimeError):
    """Go is missing or the build failed."""


def build(bin_dir: Path, go_dir: Path, say: Callable[[str], None]) -> Path:
    """Build the server into ``bin_dir``, unless the sources are unchanged; return its path."""
    binary = bin_dir / BINARY_NAME
    stamp = bin_dir / f"{BINARY_NAME}.sha256"
    digest = _sources_digest()
    if binary.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return binary
    say(f"pubsub: building the pstest server into {binary} (downloads Go modules once)…")
    bin_dir.mkdir(parents=True, exist_ok=True)
    partial = bin_dir / f".{BINARY_NAME}.building"
    env = {
        **os.environ,
        "GOPATH": str(go_dir),
        "GOMODCACHE": str(go_dir / "mod"),
        "GOCACHE": str(go_dir / "cache"),
        "GOFLAGS": "-mod=readonly -modcacherw -buildvcs=false",
        "GOWORK": "off",
        "CGO_ENABLED": "0",
    }
    done = subprocess.run(
        [_go(), "build", "-o", str(partial), "."],
        cwd=HERE, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise RecipeError(f"go build failed ({done.returncode}):\n{output}")
    partial.replace(binary)  # a running server keeps its old inode
    stamp.write_text(digest + "\n")
    return binary


def server_command(binary: Path, host: str, port: int) -> list[str]:
    """The command line that runs the server in the foreground."""
    return [str(binary), "-host", host, "-port", str(port)]


def answers(emulator_host: str) -> bool:
    """True if the server at ``emulator_host`` answers a ListTopics request right now."""
    import grpc
    from google.api_core.exceptions import GoogleAPIError
    from google.pubsub_v1 import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    channel = grpc.insecure_channel(emulator_host)
    try:
        client = PublisherClient(transport=PublisherGrpcTransport(channel=channel))
        # No retries: a probe answers once, within its deadline, whoever holds the port.
        client.list_topics(request={"project": "projects/readiness"}, retry=None, timeout=2.0)
        return True
    except GoogleAPIError:
        return False
    finally:
        channel.close()


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (HERE / name).read_bytes() + b"\0")
    return digest.hexdigest()


def _go() -> str:
    path = shutil.which("go")
    if path is None:
        raise RecipeError("`go` is not on PATH (the Pub/Sub test server is built with Go 1.26+)")
    return path
