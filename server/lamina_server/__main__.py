"""``python -m lamina_server --model <id or path> [vLLM flags] [Lamina flags]``."""

from __future__ import annotations

import os
import sys

from .config import build_parser, parse_command_line


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if "-h" in args or "--help" in args:
        build_parser().print_help()
        print("\nAll other flags are vLLM's (python -m vllm.entrypoints.cli.main serve --help).")
        return
    settings, vllm_argv = parse_command_line(args, os.environ)
    from .engine import run  # imports vLLM: keep --help and config errors fast

    run(settings, vllm_argv)


if __name__ == "__main__":
    main()
