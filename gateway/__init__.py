"""Customs: the gateway every AI-agent tool call passes through."""

__version__ = "0.1.0"
