"""Bundled demo MCP servers and the demo configuration used by `customs demo`."""
