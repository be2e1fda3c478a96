"""The SDK turns error envelopes, odd bodies and network failures into typed errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from agentruns.client import (
    AgentRunsClient,
    AgentRunsClientError,
    APIConnectionError,
    APIError,
    AuthenticationError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RunCancelled,
    RunFailed,
    ServerError,
    ValidationError,
)
from agentruns.errors import AgentRunsError

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture
def client_for() -> Iterator[Callable[[Handler], AgentRunsClient]]:
    clients: list[AgentRunsClient] = []

    def make(handler: Handler) -> AgentRunsClient:
        client = AgentRunsClient(
            base_url="http://test", api_key="key", transport=httpx.MockTransport(handler)
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def envelope(status: int, type_: str, message: str, details: object = None) -> Handler:
    body = {"error": {"type": type_, "message": message, "details": details}}
    return lambda request: httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (401, AuthenticationError),
        (404, NotFound),
        (409, Conflict),
        (413, PayloadTooLarge),
        (422, ValidationError),
        (429, RateLimited),
        (500, ServerError),
        (503, ServerError),
    ],
)
def test_status_maps_to_its_error(client_for, status: int, cls: type[APIError]) -> None:
    details = [{"loc": ["vars", "name"], "msg": "missing"}]
    client = client_for(envelope(status, "some_type", "it went wrong", details))
    with pytest.raises(cls) as caught:
        client.agents.get("a1")
    error = caught.value
    assert (error.status_code, error.type, error.message) == (status, "some_type", "it went wrong")
    assert error.details == details
    assert isinstance(error, APIError | AgentRunsClientError | AgentRunsError)


def test_unlisted_4xx_is_a_plain_api_error(client_for) -> None:
    client = client_for(envelope(418, "teapot", "short and stout"))
    with pytest.raises(APIError) as caught:
        client.agents.get("a1")
    assert type(caught.value) is APIError
    assert str(caught.value) == "418 teapot: short and stout"


def test_rate_limited_carries_retry_after(client_for) -> None:
    body = {"error": {"type": "rate_limited", "message": "slow down"}}
    client = client_for(lambda r: httpx.Response(429, json=body, headers={"Retry-After": "7"}))
    with pytest.raises(RateLimited) as caught:
        client.runs.get("r1")
    assert caught.value.retry_after == 7.0


def test_body_that_is_not_an_envelope_keeps_its_text(client_for) -> None:
    client = client_for(lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(ServerError) as caught:
        client.runs.get("r1")
    assert caught.value.type == "http_error"
    assert caught.value.message == "<html>Bad Gateway</html>"


def test_empty_error_body_uses_the_reason_phrase(client_for) -> None:
    client = client_for(lambda r: httpx.Response(404))
    with pytest.raises(NotFound) as caught:
        client.runs.get("r1")
    assert caught.value.message == "Not Found"


def test_success_that_is_not_json_is_an_api_error(client_for) -> None:
    client = client_for(lambda r: httpx.Response(200, text="<html>login</html>"))
    with pytest.raises(APIError) as caught:
        client.agents.get("a1")
    assert caught.value.type == "invalid_response"


def test_network_failure_is_a_connection_error(client_for) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = client_for(refuse)
    with pytest.raises(APIConnectionError, match="connection refused") as caught:
        client.agents.list().__next__()
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_run_failed_describes_the_server_error() -> None:
    run = {"id": "r1", "status": "failed", "error": {"type": "max_steps", "message": "too long"}}
    error = RunFailed(run)
    assert error.run is run
    assert error.error == {"type": "max_steps", "message": "too long"}
    assert str(error) == "run r1 failed: max_steps: too long"


def test_run_cancelled_carries_the_run() -> None:
    error = RunCancelled({"id": "r1", "status": "cancelled", "error": None})
    assert error.error is None
    assert str(error) == "run r1 cancelled"
