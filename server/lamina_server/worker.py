"""One worker thread for Lamina's CPU work that grows with the input.

Scanning bodies, tokenizing, templating, checking token ids and rendering answers
run there, not on the event loop, so health probes keep answering. One thread, not a
pool: the work is mostly Python (each thread that wants the GIL makes the event loop
wait longer for it, up to ``sys.getswitchinterval()`` per thread, at every turn), and
the tokenizer it uses is not safe to share between threads.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


@functools.cache
def _thread() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="lamina-worker")


async def in_worker(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` on the worker thread."""
    return await asyncio.get_running_loop().run_in_executor(
        _thread(), functools.partial(work, *args)
    )
