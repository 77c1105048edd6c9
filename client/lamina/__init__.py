"""Client of Lamina's hidden-state servers, and the ``lamina`` command.

>>> import lamina
>>> with lamina.Client("http://localhost:8000") as client:
...     states = client.hidden_states(["Hello", "World"], layers=[-2, -4])
>>> states.shape  # [prompts, layers, hidden]

``lamina.for_deployment("my-llm", "team-ns")`` reaches an LLMDeployment by name
(through ``kubectl port-forward`` from outside the cluster);
``with lamina.running("my-llm", "team-ns") as client:`` also starts it if it is
suspended or at zero replicas, and puts it back after.
``lamina.fit_alignment(source, target, prompts)`` fits a W-Matrix between two models.
"""

from __future__ import annotations

from ._version import __version__
from .align import AlignmentError
from .align_map import AlignmentMap, MapFileError
from .align_sources import Deployment
from .alignment import AlignmentResult, fit_alignment
from .batching import ServerInfo
from .client import AsyncClient, Client
from .deployment import async_for_deployment, for_deployment
from .errors import (
    BadRequest,
    ConnectionFailed,
    LaminaError,
    NotFound,
    Overloaded,
    ServerError,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from .startstop import running

__all__ = [
    "AlignmentError",
    "AlignmentMap",
    "AlignmentResult",
    "AsyncClient",
    "BadRequest",
    "Client",
    "ConnectionFailed",
    "Deployment",
    "LaminaError",
    "MapFileError",
    "NotFound",
    "Overloaded",
    "ServerError",
    "ServerInfo",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "async_for_deployment",
    "fit_alignment",
    "for_deployment",
    "running",
]
