"""The fedlora ServerApp: reads the run's config from Flower's ``run_config`` and serves.

Run config keys (all optional except one of the first two):

``fedlora-config``
    The whole RunConfig as base64-encoded JSON (``config.to_dict``); ``fedlora run
    --runtime flower`` sets it, so the TOML the user passed drives both runtimes.
``config-file`` / ``overrides``
    For users who start from ``flwr run``: a fedlora TOML file (an absolute path is safest:
    the ServerApp runs wherever the SuperLink starts it) and space-separated
    ``key=value`` overrides, as on the ``fedlora run`` command line.
``resume``
    Continue the run in ``out_dir`` from its last checkpoint.
``round-timeout`` / ``join-timeout``
    Seconds; see :class:`fedlora.runtime.flower.server.ServerOptions`.
``superlink-loopback``
    ``true`` when the launcher reached the SuperLink on loopback; otherwise the run needs
    ``federation.node_keys`` or ``federation.allow_unauthenticated`` (see
    :func:`fedlora.runtime.flower.server.require_identity`).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import shlex
from collections.abc import Mapping
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlora import config as config_mod
from fedlora.config import RunConfig
from fedlora.errors import ConfigError
from fedlora.models.offline import set_offline
from fedlora.runtime.flower.server import Reporter, ServerOptions, require_identity, serve


def encode_config(cfg: RunConfig) -> str:
    """The ``fedlora-config`` run-config value of ``cfg`` (base64 JSON: Flower's
    ``--run-config`` parser cannot carry quotes inside a string value)."""
    data = json.dumps(config_mod.to_dict(cfg), sort_keys=True).encode()
    return base64.b64encode(data).decode("ascii")


def decode_config(value: str) -> RunConfig:
    """Inverse of :func:`encode_config` (raises ``ConfigError``)."""
    try:
        data = json.loads(base64.b64decode(value.encode("ascii"), validate=True))
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"run config fedlora-config is not base64 JSON: {exc}") from None
    return config_mod.from_dict(data)


def settings(run_config: Mapping[str, Any]) -> tuple[RunConfig, bool, ServerOptions]:
    """The RunConfig, the resume flag and the server options from Flower's run config."""
    encoded = run_config.get("fedlora-config") or ""
    path = run_config.get("config-file") or ""
    if encoded and path:
        raise ConfigError("run config: give fedlora-config or config-file, not both")
    if encoded:
        cfg = decode_config(str(encoded))
    elif path:
        cfg = config_mod.load(str(path), shlex.split(str(run_config.get("overrides") or "")))
    else:
        raise ConfigError(
            "run config needs fedlora-config or config-file "
            "(e.g. flwr run . --run-config 'config-file=\"/abs/run.toml\"')"
        )
    try:
        opts = ServerOptions(
            round_timeout=float(run_config.get("round-timeout", 3600.0)),
            join_timeout=float(run_config.get("join-timeout", 300.0)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run config round-timeout/join-timeout: {exc}") from None
    return cfg, bool(run_config.get("resume", False)), opts


def log_progress(kind: str, info: dict[str, Any]) -> None:
    """Round summaries on Flower's logger, so ``flwr run --stream`` / ``flwr log`` show them
    (a deployed ServerApp has no terminal of its own)."""
    flwr_log = logging.getLogger("flwr")
    if kind == "status":
        flwr_log.info("fedlora: %s", info["text"])
    elif kind == "round_done" and info["round"] > 0:
        rec = info["record"]
        flwr_log.info(
            "fedlora round %d: accepted %s, dropped %s%s, bytes up %s, down %s",
            info["round"],
            rec.get("accepted"),
            rec.get("dropped"),
            " (skipped)" if rec.get("skipped") else "",
            rec.get("upload_bytes"),
            rec.get("download_bytes"),
        )
    elif kind == "done":
        flwr_log.info("fedlora: run folder %s", info["out"])


def make_server_app(
    cfg: RunConfig | None = None,
    *,
    resume: bool = False,
    options: ServerOptions | None = None,
    report: Reporter | None = None,
) -> ServerApp:
    """A ServerApp serving ``cfg`` (or, when None, the config in Flower's run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        set_offline()  # a Flower process is a command line of its own
        if cfg is None:  # a deployment: nodes may be on other machines
            run_cfg, run_resume, opts = settings(context.run_config)
            require_identity(run_cfg, context.run_config.get("superlink-loopback") is True)
        else:
            run_cfg, run_resume, opts = cfg, resume, options or ServerOptions()
        serve(grid, run_cfg, resume=run_resume, options=opts, report=report or log_progress)

    return server_app


# Flower loads the ServerApp as ``module:attribute``, so it must exist at module level;
# building it only registers ``main``.
app = make_server_app()
