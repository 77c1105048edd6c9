"""`python -m lamina_operator`: run the operator.

python -m lamina_operator --namespace ml      # one namespace (least privilege)
python -m lamina_operator --all-namespaces    # cluster-wide
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

import kopf
from prometheus_client import start_http_server

from lamina_operator import handlers
from lamina_operator.reconcile import DEFAULT_COST_REFRESH_SECONDS, Settings
from lamina_operator.render import ServerImages
from lamina_operator.spec import DEFAULT_CPU_IMAGE, DEFAULT_IMAGE, PrometheusSource


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="lamina-operator", description=__doc__.splitlines()[0])
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[n for n in env("LAMINA_NAMESPACES", "").split(",") if n],
        help="Namespace to watch (repeatable; env LAMINA_NAMESPACES, comma-separated).",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="Watch every namespace.")
    parser.add_argument(
        "--liveness",
        default=env("LAMINA_LIVENESS", "http://0.0.0.0:8080/healthz"),
        help="kopf's liveness endpoint (empty to disable).",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("LAMINA_METRICS_PORT", "0")),
        help="Serve Prometheus metrics on this port (0: off).",
    )
    parser.add_argument(
        "--peering",
        default=env("LAMINA_PEERING", ""),
        help="kopf peering name: run several replicas with one active (empty: standalone).",
    )
    parser.add_argument(
        "--log-format",
        choices=["plain", "json"],
        default=env("LAMINA_LOG_FORMAT", "plain"),
        help="Log format.",
    )
    parser.add_argument(
        "--server-image",
        default=env("LAMINA_SERVER_IMAGE", DEFAULT_IMAGE),
        help="Server image for GPU LLMDeployments without spec.image.",
    )
    parser.add_argument(
        "--server-image-cpu",
        default=env("LAMINA_SERVER_IMAGE_CPU", DEFAULT_CPU_IMAGE),
        help="Server image for LLMDeployments with resources.useGPU: false and no spec.image.",
    )
    parser.add_argument(
        "--prometheus-url",
        default=env("LAMINA_PROMETHEUS_URL") or None,
        help="Prometheus base URL KEDA queries for LLMDeployments without "
        "spec.autoscaling.prometheus.serverAddress.",
    )
    parser.add_argument(
        "--prometheus-auth",
        default=env("LAMINA_PROMETHEUS_AUTH") or None,
        help="KEDA TriggerAuthentication name for that Prometheus (in each LLMDeployment's "
        "namespace).",
    )
    parser.add_argument(
        "--cost-refresh-seconds",
        type=int,
        default=int(env("LAMINA_COST_REFRESH_SECONDS", str(DEFAULT_COST_REFRESH_SECONDS))),
        help="How often status.cost moves on while pods run (one status write each).",
    )
    parser.add_argument("--verbose", action="store_true", help="Debug logging.")
    args = parser.parse_args(argv)
    if not args.all_namespaces and not args.namespace:
        parser.error("give --namespace NS (repeatable) or --all-namespaces")
    if args.cost_refresh_seconds < 1:
        parser.error("--cost-refresh-seconds must be at least 1")
    return args


def settings(args: argparse.Namespace) -> Settings:
    return Settings(
        images=ServerImages(gpu=args.server_image, cpu=args.server_image_cpu),
        prometheus=PrometheusSource(
            server_address=args.prometheus_url, authentication_ref=args.prometheus_auth
        ),
        cost_refresh_seconds=args.cost_refresh_seconds,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if args.metrics_port:
        start_http_server(args.metrics_port)
    asyncio.run(
        kopf.operator(
            registry=kopf.get_default_registry(),
            clusterwide=args.all_namespaces,
            namespaces=[] if args.all_namespaces else args.namespace,
            standalone=not args.peering,
            peering_name=args.peering or None,
            liveness_endpoint=args.liveness or None,
            memo=kopf.Memo(settings=settings(args)),
        )
    )


__all__ = ["handlers", "main"]

if __name__ == "__main__":
    main()
