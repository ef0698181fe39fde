"""Just-in-time credentials for upstreams (none / static / minted / token exchange) and secret hygiene."""

from gateway.credentials.exchange import TokenExchanger
from gateway.credentials.keys import SigningKey, SigningKeys
from gateway.credentials.minter import Minter, act_claim, audience_of
from gateway.credentials.redaction import RedactingFilter, Redactor, install_log_redaction
from gateway.credentials.revocation import MemoryRevocations, RedisRevocations, RevocationStore, TaskEnded
from gateway.credentials.service import CredentialService
from gateway.credentials.stage import CredentialStage
from gateway.credentials.static import StaticCredentials
from gateway.credentials.tasks import META_TASK_KEY, TaskTracker
from gateway.credentials.web import Introspector, credential_routes

__all__ = [
    "META_TASK_KEY", "CredentialService", "CredentialStage", "Introspector", "MemoryRevocations", "Minter",
    "RedactingFilter", "Redactor", "RedisRevocations", "RevocationStore", "SigningKey", "SigningKeys",
    "StaticCredentials", "TaskEnded", "TaskTracker", "TokenExchanger", "act_claim", "audience_of",
    "credential_routes", "install_log_redaction",
]
