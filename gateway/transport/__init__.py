"""Upstream transports (streamable HTTP, legacy SSE, stdio) behind the `Upstream` protocol."""
