"""Command line: `llmux run CONFIG`, `llmux status`, `llmux simulate CONFIG`, `llmux diagram`,
`llmux --version`."""

from __future__ import annotations

import argparse
import sys

import trio

from llmux import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmux",
        description="One OpenAI-compatible endpoint in front of many models sharing one GPU.",
    )
    parser.add_argument("--version", action="version", version=f"llmux {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the multiplexer")
    run.add_argument("config", nargs="?", help="config file (.json, .yaml or .toml)")
    run.add_argument("-c", "--config", dest="config_option", help="config file (alternative)")
    run.add_argument("-p", "--port", type=int, help="listen port (overrides the config)")
    run.add_argument("--host", help="listen address (default 127.0.0.1, or the config's host)")
    run.add_argument("-v", "--verbose", action="store_true", help="readable text logs, debug")

    commands.add_parser("diagram", help="print the state machines as mermaid (the state diagram)")

    from llmux import simulate
    from llmux.cli import status as status_text

    simulate.add_parser(commands)
    status_text.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "diagram":
        from llmux.cli.diagram import render_markdown

        sys.stdout.write(render_markdown())
        return 0
    if args.command == "status":
        from llmux.cli import status as status_text

        return status_text.main(args)
    if args.command == "simulate":
        from llmux import simulate

        return simulate.main(args)
    _parser().print_help()
    return 2


def _run(args: argparse.Namespace) -> int:
    from llmux import app
    from llmux.config import ConfigError, check_listen_port, load_config
    from llmux.observability import logs

    path = args.config or args.config_option or "config.json"
    try:
        config = load_config(path)
        if args.port is not None:
            if not 0 <= args.port <= 65535:
                raise ConfigError(f"--port must be 0-65535, got {args.port}")
            check_listen_port(config, args.port)
    except ConfigError as exc:
        print(f"llmux: config error: {exc}", file=sys.stderr)
        return 2
    logs.configure(verbose=args.verbose)
    try:
        return trio.run(lambda: app.run(config, host=args.host, port=args.port))
    except app.ListenError as exc:
        # Raised before anything ran (no probe, no hook): a usage error like a bad config.
        print(f"llmux: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
