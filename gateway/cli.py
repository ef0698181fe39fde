"""The `customs` command: serve, demo, config check, policy …, approvals …, version.

Every command has --help, exits non-zero on failure and prints errors a person can act on.
Subcommand families live with their subsystem (authz/cli_args.py, approvals/cli.py, tools_cli.py) and are
only registered here. Building the parser imports only the standard library and those argument modules:
each command imports what it needs when it runs (the test suite starts this command hundreds of times,
and aiohttp, cedarpy, redis and OpenTelemetry took most of a second before even `customs version`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gateway import __version__
from gateway.approvals.cli import add_approvals_parsers
from gateway.authz.cli_args import add_policy_parsers
from gateway.tools_cli import add_tools_parsers

Command = Callable[[argparse.Namespace], int]


def _config_check(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, load_config
    from gateway.preflight import preflight
    try:
        config = load_config(args.file)
        # What `serve` refuses at start-up too (policies, key files, TLS files), not just the YAML's shape.
        warnings = preflight(config, str(args.file))
    except ConfigError as exc:
        print(exc.report("invalid configuration"), file=sys.stderr)
        return 2
    for warning in warnings:
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
    names = ", ".join(upstream.name for upstream in config.upstreams)
    print(f"{args.file}: OK ({len(config.upstreams)} upstream(s){': ' + names if names else ''})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    # Before the start-up's imports and checks (most of its time, before any event loop): a SIGHUP or SIGTERM
    # then would take its default action and end the process. Noted here, acted on once the loop runs.
    args.early_signals = early = set[int]()

    def note(signum: int, _frame: object) -> None:
        early.add(signum)
        if signum != signal.SIGHUP:  # a second stop (a start-up that seems stuck) acts at once, as by default
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, note)
    from gateway.serve import serve_command
    return serve_command(args)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo.run import demo_command
    return demo_command(args)


def _version(args: argparse.Namespace) -> int:
    print(f"customs {__version__}")
    return 0


def _port(text: str) -> int:
    """--port: a TCP port, or 0 for any free one (argparse turns the error into a usage message, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r} (0-65535; 0: any free port)") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0: any free port): {value}")
    return value


def _host(text: str) -> str:
    """--host: what listen.host takes (a usage error otherwise; the override skips the config's validation)."""
    from gateway.config.addresses import listen_host  # here: the parser is built without the config package
    try:
        return listen_host(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="customs", description="Customs: the gateway every agent tool call "
                                     "passes through (identity, Cedar policy, human approval, JIT credentials).")
    parser.add_argument("--version", action="version", version=f"customs {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_serve(sub)
    _add_demo(sub)
    _add_config(sub)
    _add_family(sub, "policy", "write, test and explain Cedar policies", add_policy_parsers)
    _add_family(sub, "approvals", "list and decide pending calls on a running gateway", add_approvals_parsers)
    _add_family(sub, "tools", "pinned and quarantined upstream tools on a running gateway", add_tools_parsers)
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=_version)
    return parser


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the gateway", formatter_class=argparse.RawDescriptionHelpFormatter,
                           description="Run the gateway. Without --config it runs on embedded defaults (the demo\n"
                           "upstreams, anonymous identity, the shipped policies, in-memory stores).",
                           epilog="exit status:\n  0 stopped by SIGTERM or Ctrl-C\n"
                           "  1 cannot listen on the address (in use: --port 0 picks a free one; a host that does "
                           "not resolve)\n  2 usage, or an invalid or refused config (every problem listed)")
    serve.add_argument("--config", "-c", type=Path, metavar="FILE",
                       help="the YAML config (default: embedded defaults, as described above)")
    serve.add_argument("--host", type=_host, help="override listen.host")
    serve.add_argument("--port", type=_port, help="override listen.port (0: any free port)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], metavar="LEVEL",
                       help="debug, info, warning or error (default info)")
    serve.set_defaults(func=_serve)


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="run the gateway with bundled demo servers and tokens",
                          formatter_class=argparse.RawDescriptionHelpFormatter,
                          description="Start the demo MCP servers and the gateway on embedded defaults, print the\n"
                          "URL and demo tokens, and show an allowed, a denied and a held call.",
                          epilog="exit status:\n  0 stopped by SIGTERM or Ctrl-C (or, with --exit-after-walkthrough, "
                          "the example calls went as shown)\n  1 cannot listen (in use: --port 0 picks a free one), "
                          "or an example call failed\n  2 usage (a --port outside 0-65535, a --dir that cannot be a "
                          "directory)")
    demo.add_argument("--port", type=_port, default=8700, help="default 8700; 0: any free port")
    demo.add_argument("--dir", type=Path, default=Path(".customs/demo"),
                      help="where the demo writes its keys and decision log (default .customs/demo)")
    demo.add_argument("--no-walkthrough", action="store_true", help="only serve; do not run the example calls")
    demo.add_argument("--exit-after-walkthrough", action="store_true", help="stop after the example calls")
    demo.set_defaults(func=_demo)


def _add_config(sub: Any) -> None:
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config_sub.required = True
    check = config_sub.add_parser("check", help="validate a config file and list every problem with its path",
                                  formatter_class=argparse.RawDescriptionHelpFormatter,
                                  description="Validate FILE as `customs serve` reads it and run the start-up checks "
                                  "serve runs\n(policies, key and TLS files); every problem is listed with its path.",
                                  epilog="exit status:\n  0 valid (warnings, if any, printed)\n"
                                  "  2 invalid (each problem listed with its path), or FILE cannot be read")
    check.add_argument("file", type=Path, metavar="FILE", help="the YAML config to check (customs.yaml)")
    check.set_defaults(func=_config_check)


def _add_family(sub: Any, name: str, help_text: str, add_parsers: Callable[[Any], None]) -> None:
    """`customs NAME SUBCOMMAND`: a family whose subcommands its subsystem registers (`dest` NAME_command)."""
    family = sub.add_parser(name, help=help_text)
    family_sub = family.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND")
    family_sub.required = True
    add_parsers(family_sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`customs ... | head`): not an error of ours. Point stdout at /dev/null so
        # the interpreter's final flush does not raise again; 141 is what a shell reports for SIGPIPE.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
