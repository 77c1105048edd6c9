"""The seed users' TypeScript client, exactly as written, against a real server.

``../shared/seeds/001_….txt`` §3.2 gives ``server/neural-bridge/self-hosted-llm-client.ts``
(``fetch`` against ``/health``, ``/v1/hidden_states`` and ``/v1/completions``). The
code block is taken from the seed file at test time (the repo holds no copy), compiled
with the pinned TypeScript of ``hack/node-tools.sh`` beside the two modules it imports
and a driver (``tests/seed_client/``), and run once with node against the llama
server. The tests check what the client's user gets: the values Lamina itself answers
for the same prompts (``POST /v1/hidden_states``, ``/v1/completions``), which are
transformers' hidden states.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from server.server_helpers import Reference, Server

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
SEED = REPO.parent / "shared" / "seeds" / "001_693a27b2a9d757e2.txt"
HEADING = "### 3.2 TypeScript Client Integration"
CLIENT = "server/neural-bridge/self-hosted-llm-client.ts"
FIXTURES = REPO / "tests" / "seed_client"
NODE_TOOLS = REPO / "hack" / "node-tools.sh"
DRIVER = "dist/server/neural-bridge/main.js"

# The driver's prompts (tests/seed_client/server/neural-bridge/main.ts).
SINGLE = ["What is AI?", "Explain machine learning"]
BATCH = [
    "What is AI?",
    "Explain machine learning",
    "The quick brown fox jumps over the lazy dog.",
    "Hidden states",
    "A longer prompt, so that the batch mixes lengths: one, two, three, four, five.",
]
LAYER = -2
RTOL = 1e-5  # float32 results of the same server: relative to the vector's norm
REF_ATOL = 1e-4  # against transformers, as in the other server tests


def seed_client_source(seed: Path = SEED) -> str:
    """The first typescript block under the §3.2 heading of the seed file."""
    if not seed.is_file():
        pytest.fail(f"the seed file {seed} is missing (../shared must sit beside the clone)")
    lines = seed.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == HEADING]
    if not starts:
        pytest.fail(f"{seed} has no heading {HEADING!r}")
    block: list[str] | None = None
    for line in lines[starts[0] + 1 :]:
        if block is None:
            if line.startswith("```typescript"):
                block = []
            elif line.startswith("## ") or line.startswith("### "):
                break
        elif line.strip() == "```":
            return "\n".join(block) + "\n"
        else:
            block.append(line)
    if block is None:
        pytest.fail(f"{seed}: no ```typescript block under {HEADING!r}")
    pytest.fail(f"{seed}: the ```typescript block under {HEADING!r} is not closed")


def node() -> str:
    found = shutil.which(os.environ.get("NODE", "node"))
    if found is None:
        pytest.fail("node (>= 18) is not on PATH (hack/node-tools.sh says what is needed)")
    return found


@pytest.fixture(scope="module")
def seed_driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed client compiled with the stand-ins and the driver: the driver's .js."""
    source = seed_client_source()
    work = tmp_path_factory.mktemp("seed_client")
    shutil.copytree(
        FIXTURES, work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("dist", "node_modules")
    )
    (work / CLIENT).write_text(source, encoding="utf-8")
    tools = subprocess.run(
        [str(NODE_TOOLS)], capture_output=True, text=True, timeout=900, check=False
    )
    if tools.returncode != 0:
        pytest.fail(f"hack/node-tools.sh failed:\n{tools.stderr}")
    node_modules = Path(tools.stdout.strip()) / "node_modules"
    (work / "node_modules").symlink_to(node_modules, target_is_directory=True)
    tsc = subprocess.run(
        [str(node_modules / ".bin" / "tsc"), "-p", "tsconfig.json", "--pretty", "false"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if tsc.returncode != 0:
        pytest.fail(
            f"tsc failed on the seed client ({CLIENT}, from {SEED.name} §3.2) "
            f"or the files of tests/seed_client:\n{tsc.stdout}{tsc.stderr}"
        )
    return work / DRIVER


class SeedRun:
    """One run of the driver: each call's value or the error it threw, the client's log."""

    def __init__(self, answer: dict[str, Any], stderr: str) -> None:
        self.answer = answer
        self.stderr = stderr
        self.log: list[dict[str, Any]] = []
        for line in stderr.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                self.log.append(entry)

    def value(self, outcome: dict[str, Any], what: str) -> Any:
        if "error" in outcome:
            pytest.fail(f"{what} threw {outcome['error']}\nthe client's log:\n{self.stderr}")
        return outcome["value"]

    def __getitem__(self, step: str) -> Any:
        return self.value(self.answer[step], f"{step}()")

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [e for e in self.log if e.get("message") == message]


@pytest.fixture(scope="module")
def seed_run(seed_driver: Path, llama_server: Server) -> SeedRun:
    proc = subprocess.run(
        [node(), str(seed_driver)],
        env={**os.environ, "LAMINA_URL": llama_server.url, "LAMINA_MODEL": "tiny-llama"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"the driver failed (exit {proc.returncode}):\n{proc.stderr}")
    try:
        answer = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"the driver printed no JSON:\n{proc.stdout}\n{proc.stderr}")
    return SeedRun(answer, proc.stderr)


def server_states(server: Server, prompts: list[str]) -> dict[str, Any]:
    """Lamina's own answer for the prompts at LAYER (the last token's state)."""
    body = {"prompts": prompts, "layers": [LAYER], "pooling": "last"}
    r = httpx.post(f"{server.url}/v1/hidden_states", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def hidden_size(ref: Reference) -> int:
    return int(ref.model.config.hidden_size)


def assert_vector(v: Any, size: int, what: str) -> None:
    """A number[] of ``size`` finite numbers."""
    assert isinstance(v, list), f"{what}: not an array but {type(v).__name__}: {str(v)[:200]}"
    assert len(v) == size, f"{what}: {len(v)} numbers, not hidden_size {size}"
    bad = [x for x in v if isinstance(x, bool) or not isinstance(x, int | float)]
    assert not bad, f"{what}: not numbers: {bad[:5]}"
    assert all(math.isfinite(x) for x in v), f"{what}: not finite"


def assert_close(got: Any, want: Any, what: str, rtol: float = RTOL) -> None:
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    assert g.shape == w.shape, f"{what}: shape {g.shape}, want {w.shape}"
    err = float(np.linalg.norm(g - w) / max(float(np.linalg.norm(w)), 1e-30))
    assert err <= rtol, f"{what}: relative error {err:.2e} > {rtol:g}"


def assert_result(r: Any, prompt: str, states: dict[str, Any], i: int, size: int) -> None:
    """A HiddenStateResult equal to entry ``i`` of the server's own answer."""
    what = f"result for {prompt!r}"
    assert isinstance(r, dict), f"{what}: {r!r}"
    assert r["prompt"] == prompt
    assert r.get("layer") == LAYER, f"{what}: layer {r.get('layer')!r}, asked {LAYER}"
    assert r.get("tokenCount") == states["prompt_tokens"][i], (
        f"{what}: tokenCount {r.get('tokenCount')!r}, server's prompt_tokens "
        f"{states['prompt_tokens'][i]}"
    )
    assert_vector(r.get("hiddenState"), size, f"{what}: hiddenState")
    assert_close(r["hiddenState"], states["hidden_states"][i], f"{what}: hiddenState")
    meta = r["metadata"]
    assert meta["model"] == states["model"]
    assert meta["provider"] == "SelfHosted-vLLM"
    assert isinstance(meta["processingTime"], int | float)
    assert meta["processingTime"] >= 0


def test_health_check(seed_run: SeedRun, llama_server: Server, reference: Any) -> None:
    ref: Reference = reference("llama")
    assert seed_run["healthCheck"] is True
    # what the client logs about the server
    healthy = seed_run.logged("vLLM server healthy")
    assert len(healthy) == 1, seed_run.stderr
    assert healthy[0].get("model") == str(llama_server.model)
    assert healthy[0].get("numLayers") == ref.num_layers
    assert healthy[0].get("hiddenSize") == hidden_size(ref)


def test_extract_hidden_states(seed_run: SeedRun, llama_server: Server, reference: Any) -> None:
    ref: Reference = reference("llama")
    size = hidden_size(ref)
    results = seed_run["extractHiddenStates"]
    assert isinstance(results, list)
    assert len(results) == len(SINGLE)
    states = server_states(llama_server, SINGLE)
    for i, (r, prompt) in enumerate(zip(results, SINGLE, strict=True)):
        assert_result(r, prompt, states, i, size)
        # which are transformers' states of the same tokens
        ids = ref.tokens(prompt)
        assert r["tokenCount"] == len(ids)
        want = ref.expected(ids, LAYER, "last")
        assert np.abs(np.asarray(r["hiddenState"]) - want).max() <= REF_ATOL
    logged = seed_run.logged("Successfully extracted hidden states")
    assert logged, seed_run.stderr
    assert {e.get("hiddenSize") for e in logged} == {size}
    assert {e.get("layer") for e in logged} == {LAYER}


def test_extract_hidden_states_batch(
    seed_run: SeedRun, llama_server: Server, reference: Any
) -> None:
    size = hidden_size(reference("llama"))
    results = seed_run["extractHiddenStatesBatch"]
    assert isinstance(results, list)
    assert [r.get("prompt") for r in results] == BATCH  # all of them, in order
    states = server_states(llama_server, BATCH)
    for i, (r, prompt) in enumerate(zip(results, BATCH, strict=True)):
        assert_result(r, prompt, states, i, size)
    # the same as asking for each prompt alone
    each = seed_run.answer["extractHiddenStatesEach"]
    for i, (r, prompt) in enumerate(zip(results, BATCH, strict=True)):
        alone = seed_run.value(each[i], f"extractHiddenStates([{prompt!r}])")
        assert len(alone) == 1
        assert alone[0]["prompt"] == prompt
        assert alone[0]["tokenCount"] == r["tokenCount"]
        assert alone[0]["layer"] == r["layer"]
        assert_close(r["hiddenState"], alone[0]["hiddenState"], f"batch vs alone: {prompt!r}")
    # chunks of 2: 2 + 2 + 1
    chunks = seed_run.logged("Processing batch")
    assert [(c.get("batchIndex"), c.get("batchSize")) for c in chunks] == [(1, 2), (2, 2), (3, 1)]
    assert {c.get("totalBatches") for c in chunks} == {3}


def server_completion(server: Server, prompt: str) -> dict[str, Any]:
    body = {"model": str(server.model), "prompt": prompt, "max_tokens": 4, "temperature": 0}
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def assert_completion(out: Any, server: Server, ref: Reference) -> None:
    assert isinstance(out, dict)
    assert isinstance(out.get("text"), str)
    usage = out["usage"]
    want = server_completion(server, "Hello")["usage"]
    assert usage["promptTokens"] == want["prompt_tokens"] == len(ref.tokens("Hello"))
    assert isinstance(usage["completionTokens"], int)
    assert 1 <= usage["completionTokens"] <= 4
    assert usage["totalTokens"] == usage["promptTokens"] + usage["completionTokens"]


def test_complete(seed_run: SeedRun, llama_server: Server, reference: Any) -> None:
    out = seed_run["complete"]
    assert_completion(out, llama_server, reference("llama"))
    # not asked for: undefined, as the client's type says (not null, not an object)
    assert "hiddenStates" not in out, str(out.get("hiddenStates"))[:200]


def test_complete_with_hidden_states(
    seed_run: SeedRun, llama_server: Server, reference: Any
) -> None:
    ref: Reference = reference("llama")
    size = hidden_size(ref)
    out = seed_run["completeWithHiddenStates"]
    assert_completion(out, llama_server, ref)
    # one vector: the last prompt token's state at the layer asked for
    assert_vector(out.get("hiddenStates"), size, "complete(): hiddenStates")
    states = server_states(llama_server, ["Hello"])
    assert_close(out["hiddenStates"], states["hidden_states"][0], "complete(): hiddenStates")
    want = ref.expected(ref.tokens("Hello"), LAYER, "last")
    assert np.abs(np.asarray(out["hiddenStates"]) - want).max() <= REF_ATOL
