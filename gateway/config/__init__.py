"""Configuration: YAML file + environment -> frozen, validated dataclasses.

- `settings.py`: the dataclasses (every key declared once, with its bounds) and
  `load_config(path, environ)`;
- `checks.py`: cross-key checks and the Redis source precedence, run by
  `load_config` after every key parsed.

Both raise `errors.ConfigError` naming the dotted key; `__main__` turns it into
exit code 2. Import the public names from here: `from gateway.config import Config`.
"""

from .settings import (
    AuthConfig,
    Config,
    CorsConfig,
    LoggingConfig,
    PostgresConfig,
    RedisConfig,
    ServerConfig,
    SSEConfig,
    load_config,
    redacted_dict,
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
