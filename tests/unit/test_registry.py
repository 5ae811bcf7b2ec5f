"""The bridge registry: every bridge declared with typed settings, strict settings, secrets as
references, and ``headwater dev``'s source flags generated exactly as they were written."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import subprocess
import sys
from typing import Any

import pytest

from headwater.bridges import registry, sources
from headwater.bridges.registry import BridgeSettings
from headwater.bridges.settings import ServiceBusSettings, SqsSettings, WebhookSettings
from headwater.runner.errors import ConfigError

KINDS = ["sqs", "pubsub", "servicebus", "webhook", "filedrop"]
#: (option strings, repeatable, default, metavar, help) of every source flag, as
#: ``bridges/sources.py`` wrote them by hand before the registry.
OLD_FLAGS: list[tuple[str, bool, Any, str | None, str]] = [
    ("--sqs", True, [], "QUEUE_URL", "an SQS queue (S3 notifications or JSON messages)"),
    (
        "--aws-endpoint",
        False,
        None,
        None,
        "AWS endpoint URL (default: AWS_ENDPOINT_URL or AWS itself)",
    ),
    ("--aws-region", False, None, None, "AWS region (default: AWS chain)"),
    (
        "--pubsub",
        True,
        [],
        "SUBSCRIPTION",
        "projects/P/subscriptions/S (PUBSUB_EMULATOR_HOST honoured)",
    ),
    ("--servicebus", True, [], "ENTITY", "a queue, or TOPIC/subscriptions/SUB"),
    (
        "--servicebus-connection",
        False,
        "${env:SERVICEBUS_CONNECTION_STRING}",
        "REF",
        "secret reference to the connection string",
    ),
    ("--webhook", True, [], "HOST:PORT", "HTTP ingress for CloudEvents and JSON (POST /events)"),
    (
        "--webhook-token",
        False,
        None,
        "REF",
        "secret reference to the bearer token the webhook requires",
    ),
    ("--drop", True, [], "DIR", "a local drop folder; finished files move to DIR/processed/"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sources.add_arguments(parser)
    return parser


def test_every_kind_is_declared_once_with_typed_settings() -> None:
    declared = registry.bridges()
    assert [b.kind for b in declared] == KINDS
    for one in declared:
        assert issubclass(one.settings, BridgeSettings) and one.settings.kind == one.kind
        assert dataclasses.is_dataclass(one.settings)
    with pytest.raises(ValueError, match="declared already"):
        registry.bridge("sqs", source="x:Y", flag="--x", metavar="X", help="", value="x")(
            SqsSettings
        )


@pytest.mark.parametrize("kind", KINDS)
def test_each_source_class_takes_its_settings_fields(kind: str) -> None:
    declared = registry.get(kind)
    parameters = inspect.signature(declared.source_class()).parameters
    assert set(parameters) == {f.name for f in dataclasses.fields(declared.settings)}
    for f in dataclasses.fields(declared.settings):  # the settings' defaults are the source's
        if f.default is not dataclasses.MISSING:
            assert parameters[f.name].default in (f.default, inspect.Parameter.empty), f.name


def test_the_generated_flags_are_the_old_ones() -> None:
    actions = [a for a in _parser()._actions if a.option_strings != ["-h", "--help"]]
    generated = [
        (a.option_strings[0], isinstance(a, argparse._AppendAction), a.default, a.metavar, a.help)
        for a in actions
    ]
    assert generated == OLD_FLAGS


def test_flags_build_the_sources_they_name(tmp_path: Any) -> None:
    args = _parser().parse_args(
        [
            *("--drop", str(tmp_path), "--drop", str(tmp_path / "b"), "--webhook", ":8099"),
            *("--webhook-token", "${env:HOME}", "--aws-region", "eu-west-1"),
        ]
    )
    built = sources.build(args)
    # in the registry's order (webhook before drop folders), each flag's in its given order
    assert [type(s).__name__ for s in built] == [
        "WebhookSource",
        "FileDropSource",
        "FileDropSource",
    ]
    assert built[0].name == "http://127.0.0.1:8099/events"


def test_unknown_missing_and_mistyped_keys_are_refused_naming_key_and_bridge() -> None:
    with pytest.raises(ConfigError, match=r"^sqs bridge: unknown setting\(s\) 'regoin'"):
        SqsSettings.from_mapping({"queue_url": "q", "regoin": "eu-west-1"})
    with pytest.raises(ConfigError, match=r"^sqs bridge: missing setting\(s\) 'queue_url'"):
        SqsSettings.from_mapping({})
    with pytest.raises(ConfigError, match=r"^webhook bridge: setting 'port' must be int, not str"):
        WebhookSettings.from_mapping({"port": "80"})
    with pytest.raises(ConfigError, match="unknown bridge 'kinesis'"):
        registry.build("kinesis", {})
    settings = SqsSettings.from_mapping({"queue_url": "q", "wait_seconds": 1})
    assert (settings.queue_url, settings.wait_seconds, settings.region) == ("q", 1, None)


def test_secret_fields_are_marked_and_must_be_references() -> None:
    secret = {
        f"{b.kind}.{f.name}"
        for b in registry.bridges()
        for f in dataclasses.fields(b.settings)
        if f.metadata.get("secret")
    }
    assert secret == {"servicebus.connection", "webhook.token"}
    literal = "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=abcdefghijklmnopqrstuvwxyz"
    with pytest.raises(ConfigError, match=r"^servicebus bridge: setting 'connection': looks like"):
        ServiceBusSettings.from_mapping({"entity": "q", "connection": literal})
    with pytest.raises(ConfigError, match=r"^webhook bridge: setting 'token': a secret must be"):
        WebhookSettings.from_mapping({"token": "hunter2"})
    assert "hunter2" not in repr(WebhookSettings(token="hunter2"))
    assert (
        WebhookSettings.from_mapping({"token": "${file:/run/token}"}).token == "${file:/run/token}"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--webhook-token", "hunter2"], "--webhook-token: a secret must be a reference"),
        (
            ["--servicebus-connection", "SharedAccessKey=abcdefghijklmnopqrstuvwxyz"],
            "--servicebus-connection: looks like an Azure connection-string key",
        ),
        (["--webhook", "localhost"], "--webhook 'localhost': expected HOST:PORT"),
    ],
)
def test_flags_are_refused_before_any_source_is_built(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        sources.build(_parser().parse_args(argv))
    assert str(caught.value).startswith(message)


def test_the_flags_import_no_cloud_sdk() -> None:
    code = (
        "import sys, argparse\n"
        "from headwater.bridges import sources\n"
        "p = argparse.ArgumentParser(); sources.add_arguments(p)\n"
        "sources.build(p.parse_args(['--webhook', ':0']))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('google', 'grpc', 'azure', 'botocore', 'aiobotocore')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


def test_a_missing_extra_is_named() -> None:
    declared = registry.Bridge(
        "nimbus",
        SqsSettings,
        "nimbus_sdk_not_installed.source:Source",
        "nimbus",
        "--n",
        "N",
        "",
        lambda text: {"queue_url": text},
    )
    with pytest.raises(
        ConfigError, match=r"needs the 'nimbus' extra \(pip install 'headwater\[nimbus\]'\)"
    ):
        declared.source_class()
