"""Cloud SDK errors leave a bridge only as headwater's ``NotConnected`` (wrapped once)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from google.api_core import exceptions as google_errors
from google.auth import exceptions as google_auth_errors

from headwater.bridges import pubsub, servicebus, sqs
from headwater.runner.errors import ConfigError, NotConnected, retriable


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ClientError({"Error": {"Code": "QueueDoesNotExist"}}, "ReceiveMessage"), "does not exist"),
        (ClientError({"Error": {"Code": "AccessDenied"}}, "ReceiveMessage"), "AccessDenied"),
        (EndpointConnectionError(endpoint_url="http://nowhere"), "nowhere"),
    ],
)
def test_every_botocore_error_becomes_not_connected(error: Exception, message: str) -> None:
    with pytest.raises(NotConnected, match=message) as caught, sqs._connection_errors("q"):
        raise error
    assert retriable(caught.value) and caught.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        google_errors.PermissionDenied("no"),
        google_errors.NotFound("no"),
        google_auth_errors.DefaultCredentialsError("no"),
    ],
)
def test_pubsub_wraps_the_sdks_roots(error: Exception) -> None:
    assert isinstance(error, pubsub._SDK_ERRORS)


async def test_a_malformed_servicebus_connection_string_is_not_quoted() -> None:
    source = servicebus.ServiceBusSource("q", connection="not a connection string")
    with pytest.raises(ConfigError, match="malformed connection string") as caught:
        await source.connect()
    assert "not a connection string" not in str(caught.value)
