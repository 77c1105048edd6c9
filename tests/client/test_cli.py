"""``lamina hidden-states`` in-process against the fake server: files written, read back."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from client.client_fake_server import FakeServer
from lamina.cli import main
from safetensors import safe_open
from safetensors.numpy import load_file

URL = "http://lamina.test"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LAMINA_URL", "LAMINA_API_KEY", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)


def lamina(fake: FakeServer, *argv: str) -> int:
    return main(list(argv), transport=httpx.MockTransport(fake))


def test_one_layer_to_npy(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "h.npy"
    code = lamina(fake, "hidden-states", "--url", URL, "a b", "c", "-o", str(out))
    assert code == 0
    saved = np.load(out)
    np.testing.assert_array_equal(
        saved, np.stack([fake.expected("a b", -2, "last"), fake.expected("c", -2, "last")])
    )
    assert capsys.readouterr().out == f"2 prompts, [2, 8] float32 -> {out}\n"


def test_several_layers_to_npy_with_a_negative_list(fake: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "h.npy"
    # "--layers -2,-4" with a space: argparse alone would take -2,-4 for an option.
    code = lamina(
        fake, "hidden-states", "--url", URL, "--layers", "-2,-4", "--pooling", "mean",
        "--dtype", "float16", "x y z", "-o", str(out),
    )  # fmt: skip
    assert code == 0
    saved = np.load(out)
    assert saved.shape == (1, 2, 8)
    assert saved.dtype == np.float16
    np.testing.assert_array_equal(saved[0, 1], fake.expected("x y z", -4, "mean", "float16"))


def test_pooled_safetensors_with_metadata(fake: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "h.safetensors"
    code = lamina(
        fake, "hidden-states", "--url", URL, "--layers", "-1,0", "p q", "r", "-o", str(out)
    )
    assert code == 0
    tensors = load_file(out)
    assert set(tensors) == {"layer.-1", "layer.0"}
    np.testing.assert_array_equal(
        tensors["layer.0"], np.stack([fake.expected(p, 0, "last") for p in ("p q", "r")])
    )
    with safe_open(out, "np") as f:
        assert f.metadata() == {
            "model": "fake/model",
            "layers": "[-1, 0]",
            "pooling": "last",
            "dtype": "float32",
            "engine_dtype": "float32",
            "num_prompts": "2",
        }


def test_pooling_all_to_safetensors_one_tensor_per_prompt_and_layer(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "h.safetensors"
    code = lamina(
        fake, "hidden-states", "--url", URL, "--pooling", "all", "--layers", "-1,-2",
        "one two three", "four", "-o", str(out),
    )  # fmt: skip
    assert code == 0
    tensors = load_file(out)
    assert {k: v.shape for k, v in tensors.items()} == {
        "prompt.0.layer.-1": (3, 8),
        "prompt.0.layer.-2": (3, 8),
        "prompt.1.layer.-1": (1, 8),
        "prompt.1.layer.-2": (1, 8),
    }
    np.testing.assert_array_equal(tensors["prompt.0.layer.-2"], fake.states("one two three", -2))
    assert "2 arrays of [2, tokens, 8] float32" in capsys.readouterr().out


def test_prompts_from_txt_jsonl_and_stdin(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  \nsecond\n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('"first prompt"\n{"prompt": "second"}\n\n{"text": "third"}\n[1, 2, 3]\n')
    out = tmp_path / "h.npy"

    assert lamina(fake, "hidden-states", "--url", URL, "-f", str(txt), "-o", str(out)) == 0
    assert np.load(out).shape == (2, 8)
    assert lamina(fake, "hidden-states", "--url", URL, "-f", str(jsonl), "-o", str(out)) == 0
    saved = np.load(out)
    np.testing.assert_array_equal(saved[2], fake.expected("third", -2, "last"))
    np.testing.assert_array_equal(saved[3], fake.expected([1, 2, 3], -2, "last"))
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\nagain\n"))
    assert lamina(fake, "hidden-states", "--url", URL, "-f", "-", "-o", str(out)) == 0
    sent = [json.loads(r.content)["prompts"] for r in fake.hidden_state_requests()]
    assert sent == [
        ["first prompt", "second"],
        ["first prompt", "second", "third", [1, 2, 3]],
        ["from stdin", "again"],
    ]


def test_url_and_api_key_from_the_environment(
    fake: FakeServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.api_key = "k"
    monkeypatch.setenv("LAMINA_URL", URL)
    monkeypatch.setenv("LAMINA_API_KEY", "k")
    assert lamina(fake, "hidden-states", "a", "-o", str(tmp_path / "h.npy")) == 0
    assert fake.requests[-1].headers["authorization"] == "Bearer k"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--pooling", "all", "a", "-o", "h.npy"], "write to a .safetensors file"),
        (["a", "-o", "h.csv"], "must end in .npy or .safetensors"),
        (["-o", "h.npy"], "no prompts"),
        (["-f", "missing.txt", "-o", "h.npy"], "cannot read prompts from missing.txt"),
        (["-f", "bad.jsonl", "-o", "h.npy"], "line 2: expected a string"),
        (["-f", "bad.jsonl", "a", "-o", "h.npy"], "not both"),
        (["--layers", "x", "a", "-o", "h.npy"], "integers separated by commas"),
        (["--pooling", "max", "a", "-o", "h.npy"], "invalid choice: 'max'"),
        (["a"], "the following arguments are required: --output/-o"),
        (["a", "-o", "no/such/dir/h.npy"], "no directory no/such/dir"),
    ],
)
def test_usage_errors_exit_2_before_any_request(
    fake: FakeServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text('"ok"\n{"prompts": "typo"}\n')
    assert lamina(fake, "hidden-states", "--url", URL, *argv) == 2
    assert message in capsys.readouterr().err
    assert fake.requests == []
    assert not (tmp_path / "h.npy").exists()


def test_no_server_given_is_a_usage_error(
    fake: FakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lamina(fake, "hidden-states", "a", "-o", "h.npy") == 2
    assert "--url URL (or LAMINA_URL) or --deployment NAME" in capsys.readouterr().err


def test_server_errors_exit_1_with_the_servers_message(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.api_key = "right"
    out = tmp_path / "h.npy"
    assert lamina(fake, "hidden-states", "--url", URL, "a", "-o", str(out)) == 1
    err = capsys.readouterr().err
    assert err.startswith("lamina: error: HTTP 401: missing or wrong API key; ")
    assert "LAMINA_API_KEY" in err
    assert "Traceback" not in err
    assert not out.exists()


def test_a_network_failure_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def time_out(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")  # not retried: no real waiting here

    code = main(
        ["hidden-states", "--url", "http://127.0.0.1:9", "a", "-o", str(tmp_path / "h.npy")],
        transport=httpx.MockTransport(time_out),
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "lamina: error: no answer from http://127.0.0.1:9 within 120 s" in err
    assert "Traceback" not in err


def test_progress_bar_only_when_asked_or_on_a_tty(
    fake: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "h.npy")
    lamina(fake, "hidden-states", "--url", URL, "a", "b", "-o", out)
    assert "prompt" not in capsys.readouterr().err
    lamina(fake, "hidden-states", "--url", URL, "a", "b", "-o", out, "--progress")
    assert "2/2" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "hidden-states" in capsys.readouterr().out
    assert main(["hidden-states", "--help"]) == 0
    assert "--pooling" in capsys.readouterr().out
