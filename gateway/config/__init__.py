"""Configuration: typed models (model.py, upstreams.py) and loading with every error reported (load.py)."""

from gateway.config.load import ConfigError, load_config, parse_config
from gateway.config.model import Config, UpstreamConfig

__all__ = ["Config", "ConfigError", "UpstreamConfig", "load_config", "parse_config"]
