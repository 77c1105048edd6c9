"""What Lamina refuses on vLLM's completion routes before vLLM parses them (pure).

* Chat shape: vLLM validates ``messages`` against a union of message types on the
  event loop, 10-80 µs per message or content part, and builds about fifteen error
  objects for every item that fits no type (vLLM 0.32, measured: 131,071 token ids as
  one message's content held the event loop 15 s and took 2.7 GB). A message must be
  an object with a text ``role`` and a ``content`` that is text, null or a list of
  content-part objects, and a request holds at most ``max_chat_items`` messages,
  content parts and tools together; anything else is refused here, in one pass.
* Fan-out: one request asks for at most ``max_prompts_per_request`` completions
  (prompts x ``n``); vLLM allows ``n`` up to 16,384, and one such request kept the
  engine busy 64 s and the event loop 0.9 s at a time.
* Text: the prompt's or the messages' characters, at most ``max_prompt_chars`` (as on
  Lamina's own routes): vLLM tokenizes the whole text before it checks it against the
  context, and turning a million-token answer into Python ints holds the event loop.
* Grammar-constrained decoding (``structured_outputs``, ``response_format`` other than
  ``text`` or ``json_object``, ``tool_choice`` ``required`` or naming a function) is
  refused: the grammar is compiled in the engine, where one hostile grammar kept it
  busy for 195 s and an invalid one fails the request with a 500.
"""

from __future__ import annotations

from typing import Any

from .config import LaminaSettings
from .errors import LaminaError, invalid, too_large

CHAT = "/v1/chat/completions"
_PLAIN_FORMATS = frozenset({"text", "json_object"})


def grammar_problem(body: dict[str, Any]) -> LaminaError | None:
    """A request for grammar-constrained decoding, refused (422)."""
    asked = None
    if body.get("structured_outputs") is not None:
        asked = "structured_outputs"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in _PLAIN_FORMATS:
        asked = f"response_format {fmt.get('type')!r}"
    choice = body.get("tool_choice")
    if choice == "required" or isinstance(choice, dict):
        asked = "tool_choice 'required' or a named function"
    if asked is None:
        return None
    return invalid(
        f"{asked}: grammar-constrained decoding is not served here (response_format "
        "'text' and 'json_object' are)"
    )


def _content_parts(i: int, message: Any) -> int:
    """How many content parts ``message`` (``messages[i]``) has; raises if its shape
    is not one vLLM can validate cheaply."""
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise invalid(f"messages[{i}] must be an object with a text 'role'")
    content = message.get("content")
    if content is None or isinstance(content, str):
        return 0
    if isinstance(content, list) and all(isinstance(part, dict) for part in content):
        return len(content)
    raise invalid(f"messages[{i}].content must be text or a list of content-part objects")


def chat_problem(body: dict[str, Any], max_items: int) -> LaminaError | None:
    """Messages that are costly for vLLM to validate (422), or too many items (413)."""
    messages, tools = body.get("messages"), body.get("tools")
    if not isinstance(messages, list):
        return None  # vLLM's own 400, cheaply
    items = len(messages) + (len(tools) if isinstance(tools, list) else 0)
    try:
        for i, message in enumerate(messages):
            items += _content_parts(i, message)
            if items > max_items:
                break
    except LaminaError as e:
        return e
    if items > max_items:
        return too_large(
            f"more than {max_items} messages, content parts and tools in one chat request"
        )
    return None


def choices_problem(body: dict[str, Any], max_choices: int) -> LaminaError | None:
    """More completions than ``max_choices`` (prompts x ``n``) asked for at once (413)."""
    prompt, n = body.get("prompt"), body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool):
        return None  # vLLM's own 400
    prompts = 1
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        prompts = len(prompt)
    if prompts * n <= max_choices:
        return None
    return too_large(
        f"the request asks for {prompts * n} completions (prompts x n), more than {max_choices}"
    )


def _texts(path: str, body: dict[str, Any]) -> list[Any]:
    """The values vLLM tokenizes as text (non-strings are left to its validation)."""
    if path != CHAT:
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, list) else [prompt]
    messages = body.get("messages")
    texts: list[Any] = []
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            texts += [part.get("text") for part in content if isinstance(part, dict)]
        else:
            texts.append(content)
    return texts


def text_problem(path: str, body: dict[str, Any], max_chars: int) -> LaminaError | None:
    """More than ``max_chars`` characters of text to tokenize in one request (413)."""
    chars = sum(len(t) for t in _texts(path, body) if isinstance(t, str))
    if chars <= max_chars:
        return None
    return too_large(f"too much text: {chars} characters > {max_chars} per request")


def completion_problem(path: str, body: Any, settings: LaminaSettings) -> LaminaError | None:
    """Why a completion or chat request must not reach vLLM, or None."""
    if not isinstance(body, dict):
        return None  # vLLM's own 400, cheaply
    problem = grammar_problem(body) or choices_problem(body, settings.max_prompts_per_request)
    if problem is None and path == CHAT:
        problem = chat_problem(body, settings.max_chat_items)
    return problem or text_problem(path, body, settings.max_prompt_chars)
