"""The client's pure decisions: retry waits, batch sizes, error envelopes, kubectl output."""

from __future__ import annotations

import email.utils

import pytest
from lamina import errors
from lamina.batching import ServerInfo, first_batch_size, halve, parse_health
from lamina.deployment import ServiceRef, forwarded_port, http_port, in_cluster_url, service_of
from lamina.retry import RetryPolicy, backoff, next_delay, retry_after_seconds

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("3", 3.0),
        (" 120 ", 120.0),
        (email.utils.formatdate(NOW + 42, usegmt=True), 42.0),
        (email.utils.formatdate(NOW - 10, usegmt=True), 0.0),  # in the past: now
        (None, None),
        ("", None),
        ("soon", None),
        ("-1", None),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header, NOW) == seconds


def test_backoff_doubles_up_to_the_cap_with_half_of_it_random() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=5.0)
    assert [backoff(n, policy, 0.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 2.5, 2.5]
    assert [backoff(n, policy, 0.999) for n in (1, 3)] == pytest.approx([0.9995, 3.998])


def overloaded(retry_after: str | None = None) -> errors.LaminaError:
    return errors.Overloaded("busy", status=429, retry_after=retry_after)


def test_next_delay_decides_what_is_retried() -> None:
    policy = RetryPolicy(max_retries=2, deadline=30)

    def delay(error: errors.LaminaError, attempt: int = 1, elapsed: float = 0.0) -> float | None:
        return next_delay(error, attempt, elapsed, policy, rand=0.0, now=NOW)

    assert delay(overloaded("4")) == 4.0
    assert delay(errors.Unavailable("loading", status=503)) == 0.25
    assert delay(errors.ConnectionFailed("refused", retryable=True)) == 0.25
    assert delay(errors.ConnectionFailed("read timeout")) is None
    assert delay(errors.ServerError("boom", status=500)) is None
    assert delay(errors.TooLarge("big", status=413)) is None
    assert delay(overloaded("4"), attempt=2) == 4.0
    assert delay(overloaded("4"), attempt=3) is None  # 2 retries done
    assert delay(overloaded("4"), elapsed=26.5) is None  # would end past the deadline
    assert delay(overloaded("40")) is None


def info(**kwargs: object) -> ServerInfo:
    base = parse_health({"model": "m", "num_layers": 4, "hidden_size": 1000})
    return ServerInfo(**{**base.__dict__, **kwargs})


def test_first_batch_size_respects_prompt_and_byte_limits() -> None:
    assert first_batch_size(info(), 1, "last", "float32") == 64
    assert first_batch_size(info(max_prompts=10), 1, "last", "float32") == 10
    # 2 layers x 1000 x 4 bytes = 8000 per prompt.
    assert first_batch_size(info(max_response_bytes=20_000), 2, "mean", "float32") == 2
    assert first_batch_size(info(max_response_bytes=20_000), 2, "mean", "float16") == 5
    assert first_batch_size(info(max_response_bytes=100), 2, "last", "float32") == 1
    assert first_batch_size(info(max_response_bytes=20_000), 2, "all", "float32") == 64


def test_halve_splits_down_to_one_prompt() -> None:
    assert [halve(n) for n in (8, 5, 2, 1)] == [4, 3, 1, None]


def test_parse_health_takes_limits_and_defaults_the_rest() -> None:
    parsed = parse_health(
        {
            "status": "healthy",
            "model": "m",
            "num_layers": 2,
            "hidden_size": 16,
            "dtype": "bfloat16",
            "limits": {"max_prompts_per_request": 8, "max_response_bytes": 1024},
        }
    )
    assert parsed == ServerInfo("m", 2, 16, "bfloat16", 8, None, 1024)
    assert parse_health({"status": "ok", "model": "m"}).max_prompts == 64


def test_error_envelope_and_fallbacks() -> None:
    body = b'{"error": {"message": "layer 9 out of range", "type": "invalid_request_error"}}'
    err = errors.from_response(422, body)
    assert isinstance(err, errors.BadRequest)
    assert (err.message, err.type, err.status) == (
        "layer 9 out of range",
        "invalid_request_error",
        422,
    )
    assert str(err) == (
        "HTTP 422: layer 9 out of range; fix the request as the message says "
        "(layers, pooling, dtype, prompts)"
    )
    assert errors.from_response(418, b"teapot").message == "teapot"
    assert isinstance(errors.from_response(418, b""), errors.BadRequest)
    assert errors.from_response(504, b"").message == "(empty body)"
    assert isinstance(errors.from_response(504, b"{}"), errors.ServerError)
    assert errors.from_response(429, b"[]", "5").retry_after == "5"


LLMD = {
    "metadata": {"name": "my-llm", "namespace": "team"},
    "status": {"endpoint": "http://my-llm-svc.team.svc:8080"},
}


def test_the_service_comes_from_the_status_or_the_name() -> None:
    assert service_of("my-llm", LLMD) == ServiceRef("my-llm-svc", 8080)
    assert service_of("my-llm", {"status": {"service": {"name": "s"}}}) == ServiceRef("s", None)
    assert service_of("my-llm", {}) == ServiceRef("my-llm", None)


def test_http_port_prefers_the_port_named_http() -> None:
    svc = {"spec": {"ports": [{"name": "metrics", "port": 9090}, {"name": "http", "port": 8000}]}}
    assert http_port(svc) == 8000
    assert http_port({"spec": {"ports": [{"port": 1234}]}}) == 1234
    with pytest.raises(errors.ConnectionFailed, match="no port named 'http'"):
        http_port({"metadata": {"name": "s"}, "spec": {"ports": []}})


def test_forwarded_port_reads_kubectls_line() -> None:
    assert forwarded_port("Forwarding from 127.0.0.1:41235 -> 8000\n") == 41235
    assert forwarded_port("Forwarding from [::1]:41235 -> 8000") is None
    assert forwarded_port("Handling connection for 41235") is None


def test_in_cluster_url() -> None:
    assert in_cluster_url("my-llm", "team", None) == "http://my-llm.team.svc:8000"
    assert in_cluster_url("my-llm", "team", 9000) == "http://my-llm.team.svc:9000"
