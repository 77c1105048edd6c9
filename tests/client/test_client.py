"""Client and AsyncClient against the fake server: values, shapes, batching, retries, errors.

Most tests run twice through the ``twin`` fixture, once per client, so the async twin
is held to the same results.
"""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import lamina
import numpy as np
import pytest
from client.client_fake_server import F32, FakeClock, FakeServer, Twin, sync_client
from lamina.wire import Result

PROMPTS: list[str | list[int]] = [
    "the cat sat",
    "on the mat",
    "a much longer prompt with many more words in it",
    "hi",
    [5, 17, 300],  # token ids
    "one two",
    "z",
]


def expected(
    fake: FakeServer, layers: int | list[int], pooling: str, dtype: str = "float32"
) -> F32 | list[F32]:
    """What the caller should get for PROMPTS, built prompt by prompt."""
    one = isinstance(layers, int)
    layer_list = [layers] if isinstance(layers, int) else layers
    per_prompt = [
        np.stack([fake.expected(p, L, pooling, dtype) for L in layer_list]) for p in PROMPTS
    ]
    if pooling == "all":
        return [p[0] for p in per_prompt] if one else per_prompt
    stacked = np.stack(per_prompt)
    return stacked[:, 0] if one else stacked


def assert_same(got: Result, want: F32 | list[F32]) -> None:
    if isinstance(want, list):
        assert isinstance(got, list)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            np.testing.assert_array_equal(g.astype(np.float32), w)
    else:
        assert isinstance(got, np.ndarray)
        assert got.shape == want.shape
        np.testing.assert_array_equal(got.astype(np.float32), want)


# -- values and shapes ---------------------------------------------------------------


def test_one_layer_gives_prompts_by_hidden_in_prompt_order(twin: Twin, fake: FakeServer) -> None:
    fake.max_prompts = 3
    got = twin("hidden_states", PROMPTS, -2)
    assert got.shape == (len(PROMPTS), fake.hidden_size)
    assert got.dtype == np.float32
    assert_same(got, expected(fake, -2, "last"))
    assert fake.batches() == [3, 3, 1]


def test_several_layers_add_a_layer_axis_in_the_order_asked(twin: Twin, fake: FakeServer) -> None:
    got = twin("hidden_states", PROMPTS, [0, -1, -3], "mean")
    assert got.shape == (len(PROMPTS), 3, fake.hidden_size)
    assert_same(got, expected(fake, [0, -1, -3], "mean"))


@pytest.mark.parametrize("layers", [-1, [-1, 1]], ids=["one-layer", "two-layers"])
def test_pooling_all_gives_one_array_per_prompt_with_its_tokens(
    twin: Twin, fake: FakeServer, layers: int | list[int]
) -> None:
    fake.max_prompts = 2
    got = twin("hidden_states", PROMPTS, layers, "all")
    want = expected(fake, layers, "all")
    assert [g.shape[-2] for g in got] == [3, 3, 10, 1, 3, 2, 1]  # tokens per prompt
    assert_same(got, want)


@pytest.mark.parametrize("pooling", ["last", "mean", "all"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_json_and_binary_transports_give_identical_arrays(
    twin: Twin, fake: FakeServer, pooling: str, dtype: str
) -> None:
    fake.max_prompts = 4
    as_json = twin("hidden_states", PROMPTS, [-1, -2], pooling, dtype=dtype, binary=False)
    as_binary = twin("hidden_states", PROMPTS, [-1, -2], pooling, dtype=dtype, binary=True)
    accepts = {r.headers["accept"] for r in fake.hidden_state_requests()}
    assert accepts == {"application/json", "application/octet-stream"}
    want = expected(fake, [-1, -2], pooling, dtype)
    assert_same(as_json, want)
    assert_same(as_binary, want)
    first = as_binary[0] if pooling == "all" else as_binary
    # numpy has float16; bfloat16 comes back widened (exactly) to float32.
    assert first.dtype == (np.float16 if dtype == "float16" else np.float32)


def test_large_answers_and_pooling_all_use_the_binary_transport(fake: FakeServer) -> None:
    fake.hidden_size = 1024
    clock = FakeClock()
    with sync_client(fake, clock) as c:
        c.hidden_states(["a"] * 64, -1)  # 64 * 1024 * 4 = 256 KiB: JSON still
        c.hidden_states(["a"] * 65, -1)  # over 256 KiB
        c.hidden_states(["a"], -1, "all")
        c.hidden_states(["a"] * 65, -1, binary=False)
    accepts = [r.headers["accept"] for r in fake.hidden_state_requests()]
    assert fake.batches() == [64, 64, 1, 1, 64, 1]
    assert accepts == [
        "application/json",
        "application/octet-stream",
        "application/octet-stream",
        "application/octet-stream",
        "application/json",
        "application/json",
    ]


def test_requests_follow_the_contract(client: lamina.Client, fake: FakeServer) -> None:
    client.hidden_states(["a b", [1, 2]], [-2, 0], "mean", dtype="float16")
    body = json.loads(fake.hidden_state_requests()[0].content)
    assert body == {
        "prompts": ["a b", [1, 2]],
        "layers": [-2, 0],
        "pooling": "mean",
        "dtype": "float16",
        "encoding_format": "base64",
    }


def test_float_encoded_json_answers_are_read_too(fake: FakeServer) -> None:
    # A server (or proxy) answering with JSON numbers instead of base64.
    def float_answers(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/hidden_states":
            body = json.loads(request.content)
            body["encoding_format"] = "float"
            request = httpx.Request("POST", request.url, headers=request.headers, json=body)
        return fake(request)

    with lamina.Client("http://t", transport=httpx.MockTransport(float_answers)) as c:
        got = c.hidden_states(PROMPTS, [-1, -2], "all", binary=False)
    assert_same(got, expected(fake, [-1, -2], "all"))


def test_progress_counts_every_prompt_once(twin: Twin, fake: FakeServer) -> None:
    fake.max_prompts = 3
    seen: list[int] = []
    twin("hidden_states", PROMPTS, -1, progress=seen.append)
    assert seen == [3, 3, 1]


# -- batching ------------------------------------------------------------------------


def test_limits_are_read_once_from_health(client: lamina.Client, fake: FakeServer) -> None:
    fake.max_prompts = 2
    client.hidden_states(PROMPTS[:3], -1)
    client.hidden_states(PROMPTS[:3], -1)
    assert fake.paths().count("GET /health") == 1
    assert fake.batches() == [2, 1, 2, 1]


def test_without_published_limits_batches_hold_64_prompts(twin: Twin, fake: FakeServer) -> None:
    fake.max_prompts = None
    got = twin("hidden_states", ["w"] * 130, -1)
    assert got.shape == (130, fake.hidden_size)
    assert fake.batches() == [64, 64, 2]


def test_pooled_batches_fit_the_byte_budget_without_a_413(twin: Twin, fake: FakeServer) -> None:
    fake.max_response_bytes = 3 * 2 * fake.hidden_size * 4  # three prompts, two layers
    got = twin("hidden_states", PROMPTS, [-1, -2])
    assert_same(got, expected(fake, [-1, -2], "last"))
    assert fake.batches() == [3, 3, 1]


def test_a_413_splits_the_batch_in_half_and_later_batches_stay_small(
    twin: Twin, fake: FakeServer
) -> None:
    fake.max_prompts = 8
    fake.max_tokens = 7  # two 3-word prompts fit, four do not
    prompts = [f"w{i} x y" for i in range(8)]
    got = twin("hidden_states", prompts, -1, "all")
    assert [g.shape for g in got] == [(3, fake.hidden_size)] * 8
    for g, p in zip(got, prompts, strict=True):
        np.testing.assert_array_equal(g, fake.expected(p, -1, "all"))
    assert fake.batches() == [8, 4, 2, 2, 2, 2]


def test_a_single_prompt_over_the_limits_raises_too_large_naming_it(
    twin: Twin, fake: FakeServer
) -> None:
    fake.max_tokens = 5
    prompts = ["a b", "c d", "one two three four five six", "e"]
    with pytest.raises(lamina.TooLarge) as caught:
        twin("hidden_states", prompts, -1)
    err = caught.value
    assert err.status == 413
    assert err.message == "in the request for prompts[2]: too many tokens: 6"
    assert "shorter prompts" in str(err)


def test_an_invalid_prompt_is_located_in_the_callers_list(twin: Twin, fake: FakeServer) -> None:
    fake.max_prompts = 2
    with pytest.raises(lamina.BadRequest) as caught:
        twin("hidden_states", ["a", "b", "c", "  "], -1)
    assert caught.value.message == "in the request for prompts[2:4]: prompts[1] has no tokens"
    assert caught.value.status == 422


# -- retries -------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after(
    twin: Twin, fake: FakeServer, clock: FakeClock
) -> None:
    fake.fail_next(2, 429, retry_after="7")
    got = twin("hidden_states", PROMPTS, -1)
    assert_same(got, expected(fake, -1, "last"))
    assert clock.slept == [7.0, 7.0]
    assert len(fake.hidden_state_requests()) == 3


def test_503_without_retry_after_backs_off_exponentially(
    twin: Twin, fake: FakeServer, clock: FakeClock
) -> None:
    fake.fail_next(3, 503)
    twin("hidden_states", PROMPTS, -1)
    # random() = 0 in the tests: half of 0.5 s, 1 s, 2 s.
    assert clock.slept == [0.25, 0.5, 1.0]


def test_retries_give_up_after_max_retries_with_the_typed_error(
    twin: Twin, fake: FakeServer, clock: FakeClock
) -> None:
    fake.fail_next(100, 429, retry_after="1", message="too many requests in flight (8)")
    with pytest.raises(lamina.Overloaded) as caught:
        twin("hidden_states", PROMPTS, -1, client={"max_retries": 3})
    err = caught.value
    assert (err.status, err.type, err.message) == (
        429,
        "overloaded_error",
        "too many requests in flight (8)",
    )
    assert err.attempts == 4
    assert len(fake.hidden_state_requests()) == 4
    assert clock.slept == [1.0, 1.0, 1.0]
    assert "gave up after 4 attempts" in str(err)


def test_a_wait_past_the_deadline_gives_up_at_once(
    twin: Twin, fake: FakeServer, clock: FakeClock
) -> None:
    fake.fail_next(1, 503, retry_after="600", message="draining")
    with pytest.raises(lamina.Unavailable):
        twin("hidden_states", PROMPTS, -1, client={"retry_deadline": 60})
    assert clock.slept == []
    assert len(fake.hidden_state_requests()) == 1


def test_a_loading_model_is_waited_for(twin: Twin, fake: FakeServer, clock: FakeClock) -> None:
    fake.loading = 2
    got = twin("hidden_states", PROMPTS, -1)
    assert_same(got, expected(fake, -1, "last"))
    assert fake.paths()[:3] == ["GET /health"] * 3
    assert len(clock.slept) == 2


def test_other_errors_are_not_retried(twin: Twin, fake: FakeServer, clock: FakeClock) -> None:
    fake.fail_next(1, 500, message="engine error: boom")
    with pytest.raises(lamina.ServerError, match="engine error: boom"):
        twin("hidden_states", PROMPTS, -1)
    assert clock.slept == []


def test_refused_connections_are_retried_then_raise_connection_failed(clock: FakeClock) -> None:
    attempts = []

    def refuse(request: httpx.Request) -> httpx.Response:
        attempts.append(request)
        raise httpx.ConnectError("[Errno 111] Connection refused")

    c = lamina.Client(
        "http://127.0.0.1:9",
        transport=httpx.MockTransport(refuse),
        max_retries=2,
        sleep=clock.sleep,
        clock=clock,
        random=lambda: 0.0,
    )
    with c, pytest.raises(lamina.ConnectionFailed) as caught:
        c.hidden_states(["a"], -1)
    assert len(attempts) == 3
    assert caught.value.status is None
    assert "cannot reach http://127.0.0.1:9" in str(caught.value)
    assert "Connection refused" in str(caught.value)


def test_a_read_timeout_is_not_retried_and_says_to_raise_the_timeout(clock: FakeClock) -> None:
    fake = FakeServer()

    def slow(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/hidden_states":
            raise httpx.ReadTimeout("timed out")
        return fake(request)

    c = lamina.Client("http://t", transport=httpx.MockTransport(slow), timeout=5, sleep=clock.sleep)
    with c, pytest.raises(lamina.ConnectionFailed) as caught:
        c.hidden_states(["a"], -1)
    assert clock.slept == []
    assert "within 5 s" in str(caught.value)
    assert "raise timeout=" in str(caught.value)


# -- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "kind", "cls"),
    [
        (400, "invalid_request_error", lamina.BadRequest),
        (422, "invalid_request_error", lamina.BadRequest),
        (401, "authentication_error", lamina.Unauthorized),
        (404, "not_found_error", lamina.NotFound),
        (413, "request_too_large", lamina.TooLarge),
        (429, "overloaded_error", lamina.Overloaded),
        (503, "service_unavailable", lamina.Unavailable),
        (500, "engine_error", lamina.ServerError),
        (502, "bad_gateway", lamina.ServerError),
    ],
)
def test_each_status_raises_its_typed_error(
    twin: Twin, fake: FakeServer, status: int, kind: str, cls: type[lamina.LaminaError]
) -> None:
    fake.scripted.append(
        httpx.Response(
            status, json={"error": {"message": f"the {kind} text", "type": kind, "code": status}}
        )
    )
    with pytest.raises(cls) as caught:
        twin("hidden_states", ["one"], -1, client={"max_retries": 0})
    err = caught.value
    assert isinstance(err, lamina.LaminaError)
    assert (err.status, err.type, err.message) == (status, kind, f"the {kind} text")
    assert str(err).startswith(f"HTTP {status}: the {kind} text; ")


def test_a_body_that_is_not_the_envelope_is_reported_as_text(twin: Twin, fake: FakeServer) -> None:
    fake.scripted.append(httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(lamina.ServerError) as caught:
        twin("hidden_states", ["one"], -1)
    assert caught.value.message == "<html>Bad Gateway</html>"
    assert caught.value.type is None


def test_api_key_is_sent_as_a_bearer_token(fake: FakeServer, clock: FakeClock) -> None:
    fake.api_key = "s3cret"
    with sync_client(fake, clock) as c, pytest.raises(lamina.Unauthorized) as caught:
        c.hidden_states(["a"], -1)
    assert "api_key=" in str(caught.value)
    with sync_client(fake, clock, api_key="s3cret") as c:
        got = c.hidden_states(["a"], -1)
        assert isinstance(got, np.ndarray)
        assert got.shape == (1, fake.hidden_size)
    assert fake.requests[-1].headers["authorization"] == "Bearer s3cret"


def test_a_wrong_base_url_says_so(fake: FakeServer) -> None:
    with lamina.Client("http://t/v1", transport=httpx.MockTransport(fake)) as c:
        with pytest.raises(lamina.NotFound) as caught:
            c.health()
        assert "without /v1" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"prompts": "just one"}, TypeError, "wrap it in [...]"),
        ({"prompts": []}, ValueError, "at least one prompt"),
        ({"layers": []}, TypeError, "non-empty list of ints"),
        ({"layers": -1.0}, TypeError, "non-empty list of ints, not -1.0"),
        ({"layers": [-1, "2"]}, TypeError, "non-empty list of ints"),
        ({"pooling": "max"}, ValueError, "last, mean, all"),
        ({"dtype": "int8"}, ValueError, "float32, float16, bfloat16"),
    ],
)
def test_caller_mistakes_fail_before_anything_is_sent(
    client: lamina.Client,
    fake: FakeServer,
    kwargs: dict[str, Any],
    error: type[Exception],
    text: str,
) -> None:
    call = {"prompts": ["a"], "layers": -1, **kwargs}
    with pytest.raises(error, match=text.replace("[", r"\[").replace("]", r"\]")):
        client.hidden_states(**call)
    assert fake.requests == []


def test_health_and_info(twin: Twin, fake: FakeServer) -> None:
    health = twin("health")
    assert health["model"] == "fake/model"
    info = twin("info")
    assert info == lamina.ServerInfo(
        model="fake/model",
        num_layers=4,
        hidden_size=8,
        engine_dtype="float32",
        max_prompts=64,
        max_tokens=100_000,
        max_response_bytes=1 << 30,
    )


def test_health_does_not_retry_a_loading_server(twin: Twin, fake: FakeServer) -> None:
    fake.loading = 1
    with pytest.raises(lamina.Unavailable, match="model is still loading"):
        twin("health")


def test_close_runs_on_close_once(fake: FakeServer) -> None:
    calls = []
    c = lamina.Client(
        "http://t", transport=httpx.MockTransport(fake), on_close=lambda: calls.append(1)
    )
    with c:
        pass
    c.close()
    assert calls == [1]


def test_numpy_integers_work_as_layers(client: lamina.Client, fake: FakeServer) -> None:
    # numpy layers are accepted at run time, beyond the declared int | Sequence[int].
    got = client.hidden_states(["a"], cast(int, np.int64(-1)))
    assert isinstance(got, np.ndarray)
    assert got.shape == (1, fake.hidden_size)
    got = client.hidden_states(["a"], cast(list[int], np.array([-1, 0])))
    assert isinstance(got, np.ndarray)
    assert got.shape == (1, 2, fake.hidden_size)
    assert json.loads(fake.hidden_state_requests()[-1].content)["layers"] == [-1, 0]


def test_a_url_that_is_not_a_lamina_server_says_so() -> None:
    page = httpx.MockTransport(lambda r: httpx.Response(200, text="<html>welcome</html>"))
    with lamina.Client("http://t", transport=page) as c, pytest.raises(lamina.ServerError) as e:
        c.hidden_states(["a"])
    assert "GET /health answered '<html>welcome</html>', not a JSON object" in str(e.value)
