"""Start a fedlora run on Flower: its simulation engine, or a SuperLink deployment.

``run_flower(cfg, runtime="flower-sim", ...)`` runs the ServerApp and one virtual SuperNode
per client in Flower's simulation engine (Ray) in this process. ``runtime="flower"`` writes
a Flower app folder (``pyproject.toml`` naming fedlora's ServerApp and ClientApp), submits
it with ``flwr run`` to a running SuperLink, follows its log until it ends, and checks it
completed. The RunConfig travels in Flower's run config (``fedlora-config``), so the same
TOML drives every runtime.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedlora.config import RunConfig
from fedlora.errors import ConfigError, FedloraError
from fedlora.runtime.flower.server import Reporter, ServerOptions, require_identity

log = logging.getLogger(__name__)

RUNTIMES = ("flower-sim", "flower")
CONNECTION = "fedlora"
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedlora-flower"
version = "0.1.0"
description = "fedlora federated LoRA fine-tuning on Flower"
license = "Apache-2.0"
# fedlora (with its pinned torch/transformers/peft/flwr) must already be installed on the
# SuperLink and every SuperNode machine; this app folder only names its entry points.
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedlora"

[tool.flwr.app.components]
serverapp = "fedlora.runtime.flower.server_app:app"
clientapp = "fedlora.runtime.flower.client_app:app"

[tool.flwr.app.config]
# Either the whole RunConfig as base64 JSON (what `fedlora run --runtime flower` sends) ...
fedlora-config = ""
# ... or a fedlora TOML file (absolute path on the SuperLink machine) plus overrides.
config-file = ""
overrides = ""
resume = false
round-timeout = 3600.0
join-timeout = 300.0
superlink-loopback = false
"""


def write_app(folder: str | Path) -> Path:
    """Write the Flower app folder (a ``pyproject.toml``) that ``flwr run`` submits."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / "pyproject.toml").write_text(APP_PYPROJECT)
    return path


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """Environment for Flower processes: no telemetry or update check (offline use)."""
    env = dict(os.environ)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def flwr_executable() -> str:
    """The ``flwr`` CLI next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "flwr"
    found = str(beside) if beside.exists() else shutil.which("flwr")
    if not found:
        raise ConfigError("the flwr command is not installed (pip install flwr==1.41.0)")
    return found


def connection_toml(address: str, *, insecure: bool, root_certificates: str | None) -> str:
    """A Flower config (``$FLWR_HOME/config.toml``) whose default connection is ``address``."""
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f"address = {json.dumps(address)}",
        f"insecure = {'true' if insecure else 'false'}",
    ]
    if root_certificates:
        lines.append(f"root-certificates = {json.dumps(str(Path(root_certificates).resolve()))}")
    return "\n".join(lines) + "\n"


def _is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0]
    return host in LOOPBACK


def run_config_args(
    cfg: RunConfig, resume: bool, options: ServerOptions, loopback: bool = False
) -> list[str]:
    """``--run-config`` items for ``flwr run`` carrying the whole fedlora config (and, for a
    SuperLink this launcher reached on loopback, that fact: see :func:`require_identity`)."""
    from fedlora.runtime.flower.server_app import encode_config

    return [
        f'fedlora-config="{encode_config(cfg)}"',
        f"resume={'true' if resume else 'false'}",
        f"round-timeout={float(options.round_timeout)}",
        f"join-timeout={float(options.join_timeout)}",
        f"superlink-loopback={'true' if loopback else 'false'}",
    ]


def _run_sim(cfg: RunConfig, resume: bool, options: ServerOptions, report: Reporter | None) -> Path:
    from flwr.simulation import run_simulation

    from fedlora.runtime.client_data import with_client_count
    from fedlora.runtime.flower.client_app import make_client_app
    from fedlora.runtime.flower.server_app import make_server_app
    from fedlora.train.threads import available_cores, resolve_threads

    cfg = with_client_count(cfg)  # one operator holds every simulated node's data here
    cpus = available_cores()
    # Up to `cpus` simulated clients train at once, one Ray actor each: they share the cores.
    concurrent = min(cpus, cfg.data.clients)
    threads = resolve_threads(cfg.train.threads, concurrent)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
    # One CPU per virtual SuperNode: Ray then runs up to `cpus` clients at once; each
    # ClientApp gets the node config partition-id = k, as a deployed SuperNode would.
    backend = {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {"num_cpus": cpus, "num_gpus": 0, "log_to_driver": False},
    }
    # One operator runs every simulated node here, so each node's data file is the one this
    # config names for its client (a deployed node names its own, in its node config).
    files = [cfg.data.dataset] * cfg.data.clients if cfg.data.dataset else list(cfg.data.files)
    run_simulation(
        server_app=make_server_app(cfg, resume=resume, options=options, report=report),
        # The simulated nodes keep own parts where an in-process run keeps them.
        client_app=make_client_app(files, state_root=str(Path(cfg.out_dir) / "clients")),
        num_supernodes=cfg.data.clients,
        backend_config=backend,  # type: ignore[arg-type]  # Flower's annotation is too narrow
    )
    return Path(cfg.out_dir)


def submit(
    app_dir: Path,
    run_config: list[str],
    env: dict[str, str],
    *,
    connection: str | None = None,
    timeout: float | None = None,
) -> int:
    """``flwr run`` the app in ``app_dir``, stream its log until it ends; returns the run id."""
    cmd = [flwr_executable(), "run", str(app_dir)]
    if connection:
        cmd.append(connection)
    cmd += ["--run-config", " ".join(run_config), "--stream"]
    log.info("submitting: flwr run %s %s", app_dir, connection or "")
    began = time.monotonic()
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    sys.stderr.write(proc.stdout[-20000:])
    run_id = _run_id(proc.stdout + proc.stderr)
    if proc.returncode != 0 or run_id is None:
        raise FedloraError(
            f"flwr run failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    remaining = None if timeout is None else max(10.0, timeout - (time.monotonic() - began))
    status = wait_finished(run_id, env, connection=connection, timeout=remaining)
    if not status.endswith("completed"):
        raise FedloraError(f"Flower run {run_id} ended as {status!r}; see `flwr log {run_id}`")
    return run_id


def _run_id(text: str) -> int | None:
    marker = "Successfully started run "
    for line in text.splitlines():
        if marker in line:
            word = line.split(marker, 1)[1].split()[0]
            if word.isdigit():
                return int(word)
    return None


def run_status(run_id: int, env: dict[str, str], connection: str | None = None) -> str:
    """The status of a Flower run (``pending``, ``running``, ``finished:completed``, ...)."""
    cmd = [flwr_executable(), "list"]
    if connection:
        cmd.append(connection)
    cmd += ["--run-id", str(run_id), "--format", "json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)
    try:
        data: Any = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise FedloraError(
            f"flwr list gave no JSON: {proc.stdout[-500:]} {proc.stderr[-500:]}"
        ) from None
    for run in data.get("runs", []):
        if int(run.get("run-id", -1)) == run_id:
            return str(run.get("status", "unknown"))
    raise FedloraError(f"flwr list does not know run {run_id}: {proc.stdout[-500:]}")


def wait_finished(
    run_id: int,
    env: dict[str, str],
    *,
    connection: str | None = None,
    timeout: float | None = None,
    poll: float = 2.0,
) -> str:
    """Poll until the run has finished; returns its final status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = run_status(run_id, env, connection)
        if status.startswith("finished"):
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise FedloraError(f"Flower run {run_id} still {status!r} after {timeout:g} s")
        time.sleep(poll)


def _run_deployment(
    cfg: RunConfig,
    superlink: str,
    resume: bool,
    options: ServerOptions,
    root_certificates: str | None,
    timeout: float | None,
) -> Path:
    loopback = ":" in superlink and _is_loopback(superlink)
    require_identity(cfg, loopback)
    with tempfile.TemporaryDirectory(prefix="fedlora-flower-") as tmp:
        app_dir = write_app(Path(tmp) / "app")
        if ":" in superlink:
            # An address: a throwaway Flower config whose default connection is it.
            home = Path(tmp) / "flwr-home"
            home.mkdir()
            insecure = root_certificates is None and _is_loopback(superlink)
            if not insecure and root_certificates is None:
                log.info(
                    "%s is not loopback: using TLS with the system's root certificates", superlink
                )
            (home / "config.toml").write_text(
                connection_toml(superlink, insecure=insecure, root_certificates=root_certificates)
            )
            env, connection = flower_env(home), None
        else:
            # A connection name from the user's own Flower config (TLS, certificates, auth).
            env, connection = flower_env(), superlink
        submit(
            app_dir,
            run_config_args(cfg, resume, options, loopback),
            env,
            connection=connection,
            timeout=timeout,
        )
    return Path(cfg.out_dir)


def run_flower(
    cfg: RunConfig,
    *,
    runtime: str,
    superlink: str | None,
    resume: bool,
    report: Reporter | None = None,
    options: ServerOptions | None = None,
    root_certificates: str | None = None,
    timeout: float | None = None,
) -> Path:
    """Run (or resume) ``cfg`` on Flower; returns the run folder.

    Parameters
    ----------
    cfg
        The run, exactly as for the in-process runtime.
    runtime
        ``"flower-sim"`` (Flower's simulation engine in this process, one virtual SuperNode
        per client) or ``"flower"`` (submit to the SuperLink ``superlink``).
    superlink
        ``HOST:PORT`` of a SuperLink (plaintext on loopback; TLS otherwise, verified with
        ``root_certificates`` or the system's roots), or the name of a connection in the
        user's Flower config (``$FLWR_HOME/config.toml``). Only for ``"flower"``.
    resume
        Continue the run in ``cfg.out_dir`` from its last checkpoint.
    report
        Progress callback (simulation only: a deployed ServerApp runs in its own process).
    options
        Flower-only server options (round and join timeouts).
    root_certificates
        CA certificate (PEM) of a TLS SuperLink given as ``HOST:PORT``.
    timeout
        Seconds to wait for a deployed run to finish (None: no limit).

    Returns
    -------
    Path
        ``cfg.out_dir``; for a deployment it is a folder on the SuperLink's machine, where
        the ServerApp runs.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    opts = options or ServerOptions()
    # The ServerApp may run in another working directory: pin the run folder now.
    cfg = dataclasses.replace(cfg, out_dir=str(Path(cfg.out_dir).expanduser().resolve()))
    if runtime == "flower-sim":
        if superlink:
            raise ConfigError("--superlink is for --runtime flower, not flower-sim")
        return _run_sim(cfg, resume, opts, report)
    if not superlink:
        raise ConfigError(
            "--runtime flower needs --superlink HOST:PORT (or a Flower connection name)"
        )
    return _run_deployment(cfg, superlink, resume, opts, root_certificates, timeout)
