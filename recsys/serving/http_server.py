"""Running the HTTP API (`recsys serve`): uvicorn, one process or `workers` processes.

uvicorn's worker processes import the app themselves, so the app is always given
as the factory `recsys.serving.http:app_from_env` and its configuration travels
in the environment (RECSYS_SERVE_CONFIG, and RECSYS_API_KEYS as the user set it).
Each worker loads the version and follows the alias on its own.
"""
from __future__ import annotations

import copy
import os

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from recsys.serving.http import CONFIG_ENV, ServeConfig
from recsys.serving.http_keys import api_keys_from_env, check_bind

APP_FACTORY = "recsys.serving.http:app_from_env"


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, *,
          insecure: bool = False, access_log: bool = False, log_level: str = "info") -> None:
    """Serve until interrupted. Refuses a public address without API keys unless `insecure`."""
    check_bind(host, api_keys_from_env(), insecure)
    os.environ[CONFIG_ENV] = config.to_json()
    if config.search_threads > 0:  # worker processes: OpenMP reads it when FAISS loads (see ServeConfig)
        os.environ["OMP_NUM_THREADS"] = str(config.search_threads)
    uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers if workers > 1 else None,
                access_log=access_log, log_level=log_level, log_config=log_config(), timeout_graceful_shutdown=5,
                server_header=False, proxy_headers=False)


def log_config() -> dict:
    """uvicorn's logging, with the project's loggers (versions loaded and swapped, failed reloads) beside it."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["recsys"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config
