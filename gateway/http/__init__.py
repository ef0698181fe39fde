"""The HTTP edge: routes, HTTP-only middleware, the MCP endpoint and sessions."""
