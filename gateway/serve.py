"""Run the gateway process: listen, handle SIGTERM (drain, exit 0) and SIGHUP (reload), log.

Used by `customs serve` and `customs demo`. On SIGTERM the listener closes at once, in-flight
calls get up to `listen.drain_timeout_s` to finish, pending approvals stay in the store.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.config import Config, ConfigError, load_config, parse_config
from gateway.config.addresses import url_host
from gateway.config.load import shipped_policies as shipped_policies  # re-exported: setup.py, demo
from gateway.keys import GATEWAY
from gateway.preflight import exposure_warnings, policy_warnings, preflight, ssl_context, upstream_warnings

if TYPE_CHECKING:  # for the annotation only: run() imports the app where it runs, as it always has
    from gateway.app import Gateway

log = logging.getLogger("customs")

# Tracked objects allocated (less those freed) between young collections; CPython's default is 700.
# The calls in flight alone hold about 60 each, so at 50 concurrent calls a threshold of 3,000 was
# crossed every ~60 calls by objects that were all still alive: each pass (~1 ms) scanned them, freed
# nothing and cost ~17 µs a call (~27 µs traced; measured with gc.callbacks). Above the in-flight
# working set of a few hundred concurrent calls, young collections run only for real garbage.
GC_YOUNG_THRESHOLD = 50_000


def default_config(port: int = 8700) -> Config:
    """Embedded defaults: the demo servers as stdio children, in-memory stores, shipped policies."""
    return parse_config({
        "listen": {"host": "127.0.0.1", "port": port},
        "upstreams": [
            {"name": "inventory", "command": [sys.executable, "-m", "gateway.demo.servers", "inventory"]},
            {"name": "payments", "command": [sys.executable, "-m", "gateway.demo.servers", "payments"]},
        ],
        "identity": {"mode": "anonymous", "anonymous_attributes": {"tenant": "demo"}},
        "policies": {"dir": str(shipped_policies())},
    })


def free_port(host: str) -> int:
    """A port free on `host` now (for `--port 0`: the URLs the gateway hands out must name a real port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The API's trace-state parser (and the W3C propagator's length checks) warn about every malformed inbound
    # `tracestate`/`traceparent`, quoting the member they refuse: an agent's text, line breaks included when it
    # comes in params._meta, so a caller could write log lines of its choosing. Malformed context is ignored
    # (docs/tracing.md); nothing these two loggers say below ERROR is about the gateway itself.
    for name in ("opentelemetry.trace.span", "opentelemetry.trace.propagation.tracecontext"):
        logging.getLogger(name).setLevel(logging.ERROR)


async def run(config: Config, *, config_path: Path | None = None, file_config: Config | None = None,
              on_ready: Callable[[str], Awaitable[None] | None] | None = None,
              stop: asyncio.Event | None = None, early_signals: Collection[int] = ()) -> int:
    from gateway.app import create_app, serving_runner
    from gateway.credentials.redaction import Redactor, install_log_redaction
    loop = asyncio.get_running_loop()
    stop, hup_while_starting = _note_signals_while_starting(loop, stop, early_signals)
    log_filter = install_log_redaction(Redactor(config.secrets))  # no secret reaches a log line, whoever logs it
    tls = ssl_context(config)  # before anything starts: unusable TLS files refuse start-up (ConfigError)
    app = await create_app(config)
    # From now on the gateway's own redactor: it also knows the exact secrets the gateway holds
    # (static upstream keys, client secrets), which have no recognisable pattern.
    log_filter.redactor = app[GATEWAY].parts.credentials.redactor
    # keepalive_timeout also closes a connection that never sends a request (aiohttp arms it on connect).
    runner = await serving_runner(app, shutdown_timeout=config.listen.drain_timeout_s,
                                  keepalive_timeout=config.listen.idle_timeout_s, access_log=None)
    site = await _listen(runner, config, tls)
    if site is None:
        return 1
    url = _announce(config, site)
    gateway = app[GATEWAY]
    # A SIGHUP compares the file with the file as it was read, not with --host/--port applied to it.
    _handle_signals(loop, stop, lambda: asyncio.ensure_future(gateway.parts.reload(config_path, file_config or config)),
                    hup_while_starting)
    if on_ready is not None:
        maybe = on_ready(url)
        if maybe is not None:
            await maybe
    await stop.wait()
    await _drain(loop, config, gateway, runner)
    return 0


def _note_signals_while_starting(loop: asyncio.AbstractEventLoop, stop: asyncio.Event | None,
                                 early_signals: Collection[int]) -> tuple[asyncio.Event, asyncio.Event]:
    """The `stop` event and one set by a SIGHUP, each set by the signals that arrive while the gateway starts
    (and by `early_signals`, noted before the loop's handlers); `_handle_signals` acts on them once it listens."""
    # SIGHUP's default action ends the process: one sent while the gateway starts (a reload hook run right
    # after start, a JWKS URL or Redis that is slow to answer) would kill it. Remember it; reload once up.
    hup_while_starting = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, hup_while_starting.set)
    # SIGTERM/SIGINT while starting (a JWKS URL, Redis or stdio children can take seconds) would end it with the
    # signal's default (-15, or a KeyboardInterrupt): remember it, and stop cleanly (exit 0) as soon as it listens.
    stop = stop or asyncio.Event()

    def stop_while_starting(sig: signal.Signals) -> None:
        stop.set()
        loop.remove_signal_handler(sig)  # a second one (a start-up that seems stuck) acts at once, as by default

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_while_starting, sig)
    # Those that came before the loop's handlers (serve_command's checks): early_signals, noted by the CLI.
    for signum in early_signals:
        (hup_while_starting if signum == signal.SIGHUP else stop).set()
    return stop, hup_while_starting


async def _listen(runner: web.AppRunner, config: Config, tls: ssl.SSLContext | None) -> web.TCPSite | None:
    """The started listener; None, with the runner cleaned up and the reason on stderr, if it cannot listen."""
    site = web.TCPSite(runner, config.listen.host, config.listen.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        hint = ("pick another port with --port (--port 0: any free port) or stop what holds this one"
                if exc.errno == errno.EADDRINUSE else "check the host (--host or listen.host)")
        print(f"customs: cannot listen on {config.listen.host}:{config.listen.port}: {exc.strerror}\n  hint: {hint}",
              file=sys.stderr)
        return None
    return site


def _announce(config: Config, site: web.TCPSite) -> str:
    """The URL the gateway listens on (its real port), logged and printed with the one agents use."""
    server: Any = site._server
    sockets = [s.getsockname() for s in (server.sockets if server else [])]
    port = sockets[0][1] if sockets else config.listen.port
    url = f"{'https' if config.listen.tls else 'http'}://{url_host(config.listen.host)}:{port}"
    _settle_heap()
    # Agents use public_url when one is set: the bind address (0.0.0.0 in a container) is a Host the guard refuses.
    agents = config.listen.resource_url if config.listen.public_url else url
    log.info("customs listening on %s (agents: %s/mcp)", url, agents)
    # stdout carries the decision log by default: keep it JSON lines only, the banner goes to stderr then.
    banner = sys.stderr if config.decision_log.path is None else sys.stdout
    print(f"customs: listening on {url}  (agents connect to {agents}/mcp)", file=banner, flush=True)
    return url


async def _drain(loop: asyncio.AbstractEventLoop, config: Config, gateway: Gateway, runner: web.AppRunner) -> None:
    """Stop after SIGTERM: held calls answered at once, in-flight ones drained up to the deadline, then withdrawn."""
    log.info("shutting down: draining in-flight calls (up to %.0fs)", config.listen.drain_timeout_s)
    gateway.draining = True
    # The last span export shares the drain deadline instead of adding its own 10 s after it.
    deadline = loop.time() + config.listen.drain_timeout_s
    gateway.shutdown_deadline = deadline  # and shutdown's Redis work (gateway/app.py: Gateway.close)
    gateway.parts.observability.telemetry.shutdown_deadline = deadline
    gateway.parts.observability.metrics.shutdown_deadline = deadline
    # Held calls are not in-flight work to wait for: they answer approval_pending (with the id) now and their
    # items stay pending in the store; waiting for a person would only run into the drain deadline.
    gateway.parts.approve.release_held()
    # At the deadline the calls still in flight are withdrawn, each answered shutting_down: aiohttp's own shutdown
    # would only fail their request bodies, wait the whole drain_timeout_s again, then cut the connections.
    at_deadline = loop.call_at(deadline, gateway.sessions.withdraw_calls)
    try:
        await runner.cleanup()
    finally:
        at_deadline.cancel()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)
    log.info("stopped")


def _handle_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event, reload: Callable[[], object],
                    hup_while_starting: asyncio.Event) -> None:
    """SIGTERM and SIGINT stop; SIGHUP reloads, at once if one arrived while the gateway was starting."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    if hup_while_starting.is_set():
        log.info("SIGHUP arrived while starting: reloading now")
        reload()


def _settle_heap() -> None:
    """Start-up objects (modules, config, policies, SDK registries) live as long as the process: move them
    out of the collector's reach (gc.freeze), so a full collection scans only what requests allocate, and
    collect young objects only when more than the calls in flight have piled up (see GC_YOUNG_THRESHOLD)."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, second, third)


def serve_command(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    try:
        config = load_config(args.config) if args.config else default_config()
    except ConfigError as exc:
        print(f"customs: {exc.report('invalid configuration')}", file=sys.stderr)
        return 2
    file_config = config
    listen_changes = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if (args.port if args.port is not None else config.listen.port) == 0 and config.listen.public_url is None:
        # The gateway's own URL (token audience, RFC 9728 metadata, minted `iss`) names its port, so
        # "any free port" is settled before anything is built from the config.
        host = args.host or config.listen.host
        try:
            listen_changes["port"] = free_port(host)
        except OSError as exc:  # a host that does not resolve or is not this machine's: as run() reports it
            print(f"customs: cannot listen on {host}:0: {exc.strerror or exc}", file=sys.stderr)
            return 1
    if listen_changes:
        config = config.model_copy(update={"listen": config.listen.model_copy(update=listen_changes)})
    if args.config is None:
        log.warning("no --config given: running on embedded defaults (demo upstreams, anonymous identity)")
    try:
        # The checks `customs config check` runs, all problems listed, before any upstream child starts.
        preflight(config, str(args.config or "embedded defaults"))
        for warning in [*policy_warnings(config), *upstream_warnings(config), *exposure_warnings(config)]:
            log.warning("%s", warning)
        return asyncio.run(run(config, config_path=args.config, file_config=file_config,
                               early_signals=getattr(args, "early_signals", ())))
    except ConfigError as exc:
        print(f"customs: {exc.report('refusing to start')}", file=sys.stderr)
        return 2
