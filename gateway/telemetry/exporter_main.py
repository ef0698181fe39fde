"""Entry point of the span exporter child process (`python -m gateway.telemetry.exporter_main`).

A module of its own, imported by nothing, so running it never re-imports a module the package already loaded.
"""

from __future__ import annotations

import logging
import signal

from gateway.telemetry.span_child import main

if __name__ == "__main__":
    # Ctrl-C reaches the whole process group: the gateway decides when this child ends (EOF on stdin),
    # after handing it the last spans.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s customs span exporter %(levelname)s %(message)s")
    main()
