"""Configuration: YAML file + environment -> frozen, validated dataclasses.

- `model.py`: the frozen dataclasses, every key declared once with its bounds;
- `loading.py`: `load_config(path, environ)`: YAML and `${VAR}` expansion into the
  model, then the checks; `redacted_dict` for `check-config`;
- `checks.py`: cross-key checks and the Redis source precedence.

Both raise `errors.ConfigError` naming the dotted key; `__main__` turns it into
exit code 2. Import the public names from here: `from gateway.config import Config`.
"""

from .loading import load_config, redacted_dict
from .model import (
    AuthConfig,
    Config,
    CorsConfig,
    LoggingConfig,
    PostgresConfig,
    RedisConfig,
    ServerConfig,
    SSEConfig,
)

__all__ = [
    "AuthConfig",
    "Config",
    "CorsConfig",
    "LoggingConfig",
    "PostgresConfig",
    "RedisConfig",
    "SSEConfig",
    "ServerConfig",
    "load_config",
    "redacted_dict",
]
