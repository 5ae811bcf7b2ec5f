"""The dev broker's set-up helpers (tests/servers/kafka.py)."""

import base64
import os

from tests.servers import kafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch):
    """A leading ``-`` made ``kafka-storage format`` read the id as an option (a 1-in-64 flake)."""
    draws = iter([b"\xf8" + bytes(15), bytes(16)])
    monkeypatch.setattr(os, "urandom", lambda n: next(draws))

    cluster_id = kafka.new_cluster_id()

    assert base64.urlsafe_b64encode(b"\xf8" + bytes(15)).decode().startswith("-")
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"
