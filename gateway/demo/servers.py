"""Demo MCP tool servers (inventory: read-only tools; payments: a write tool `pay`), built with the SDK.

Run one with `python -m gateway.demo.servers NAME [--http PORT | --sse PORT]` (stdio by default).
Each server counts the calls it executed so tests can prove nothing ran twice or unauthorised.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations

INITIAL_STOCK = {"widget": 42, "gadget": 7, "gizmo": 0}


def inventory_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("inventory", instructions="Read-only stock levels.")
    executed: list[str] = []
    stock = dict(INITIAL_STOCK)  # per server: one server's writes never show up in another

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                             open_world_hint=False))
    def get_stock(sku: str) -> str:
        """Current stock level of one SKU."""
        executed.append(f"get_stock:{sku}")
        return f"{sku}: {stock.get(sku, 0)} in stock"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                                             open_world_hint=False))
    def list_skus() -> list[str]:
        """All known SKUs."""
        executed.append("list_skus")
        return sorted(stock)

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False,
                                             open_world_hint=False))
    def set_stock(sku: str, quantity: int) -> str:
        """Overwrite the stock level of one SKU (a write back)."""
        executed.append(f"set_stock:{sku}:{quantity}")
        stock[sku] = quantity
        return f"{sku} set to {quantity}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def executed_calls() -> list[str]:
        """Calls this server executed (for tests and the demo)."""
        return list(executed)

    @server.resource("inventory://skus")
    def skus_resource() -> str:
        """The SKU list as a resource."""
        return "\n".join(sorted(stock))

    @server.prompt()
    def restock(sku: str) -> str:
        """A prompt asking to restock one SKU."""
        return f"Please restock {sku}."

    return server


def payments_server() -> MCPServer[Any]:
    server: MCPServer[Any] = MCPServer("payments", instructions="Moves money. Every call is a write.")
    executed: list[dict[str, Any]] = []

    @server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False,
                                             open_world_hint=True))
    def pay(account: str, amount: float, memo: str = "") -> str:
        """Pay `amount` to `account`."""
        executed.append({"account": account, "amount": amount, "memo": memo})
        return f"paid {amount} to {account}"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False))
    def balance(account: str) -> str:
        """Balance of one account."""
        return f"{account}: 1000.00"

    @server.tool(annotations=ToolAnnotations(read_only_hint=True))
    def executed_calls() -> list[dict[str, Any]]:
        """Payments this server executed (for tests and the demo)."""
        return list(executed)

    return server


SERVERS = {"inventory": inventory_server, "payments": payments_server}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo.servers")
    parser.add_argument("name", choices=sorted(SERVERS))
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    group.add_argument("--sse", type=int, metavar="PORT", help="serve legacy SSE on 127.0.0.1:PORT/sse")
    args = parser.parse_args(argv)
    server = SERVERS[args.name]()
    if args.http is not None:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    elif args.sse is not None:
        server.run("sse", host="127.0.0.1", port=args.sse)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main(sys.argv[1:])
