"""The `ai-gateway` command: `serve`, `config check`, and the admin commands of `admin_cli`
(`tenants create|list`, `keys create|list|revoke`, `usage`, `db upgrade`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_gateway import admin_cli
from ai_gateway._runtime import tune_for_serving
from ai_gateway.settings import ConfigError, Settings, check_config, describe, is_loopback_host, load_settings

if TYPE_CHECKING:
    from ai_gateway.web.app import GatewayApp

__all__ = ["app_from_env", "main"]

log = logging.getLogger("ai_gateway")

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_MAX_WORKERS = 64


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ai-gateway", description="One API in front of many LLM providers.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--host", help="bind address (env AIGW_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="bind port (env AIGW_PORT, default 8000)")
    serve.add_argument(
        "--config", help="YAML config file (env AIGW_CONFIG, default ./gateway.yaml if present)"
    )
    serve.add_argument(
        "--allow-open",
        action="store_true",
        default=None,
        help="in open mode (no master key, no key in the database), allow binding a non-loopback address",
    )
    serve.add_argument("--log-level", help="debug, info, warning, error")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (default 1); several share limits and cache only through AIGW_REDIS_URL",
    )

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the configuration offline and explain each problem")
    check.add_argument("--config", help="YAML config file to check")
    admin_cli.add_commands(sub)
    return parser


def _serve(args: argparse.Namespace) -> int:
    if not 1 <= args.workers <= _MAX_WORKERS:
        print(f"--workers must be from 1 to {_MAX_WORKERS}, got {args.workers}", file=sys.stderr)
        return 2
    overrides = {
        "host": args.host,
        "port": args.port,
        "allow_open": args.allow_open,
        "log_level": args.log_level,
        "config": args.config,
    }
    try:
        settings = load_settings(overrides=overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        print("Run `ai-gateway config check` for details.", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.server.log_level.upper(), format=_LOG_FORMAT)
    tune_for_serving()
    if args.workers > 1:
        _export_overrides(overrides)
    return _run(settings, args.workers)


def _export_overrides(overrides: dict[str, Any]) -> None:
    """Hand the command-line flags to worker processes, which load their settings from the environment
    (`app_from_env`): a flag beats the environment, so it simply takes the variable's place."""
    names = {
        "host": "AIGW_HOST",
        "port": "AIGW_PORT",
        "allow_open": "AIGW_ALLOW_OPEN",
        "log_level": "AIGW_LOG_LEVEL",
        "config": "AIGW_CONFIG",
    }
    for key, var in names.items():
        value = overrides[key]
        if value is None:
            continue
        if key == "config":
            value = Path(value).resolve()  # a worker's working directory is the same; be explicit anyway
        os.environ[var] = str(value).lower() if isinstance(value, bool) else str(value)


def app_from_env() -> GatewayApp:
    """The app of one worker of `serve --workers N` (uvicorn's factory, `ai_gateway.cli:app_from_env`).

    A worker is a fresh interpreter: nothing of the parent's state or logging set-up reaches it, so it
    loads the settings the way `serve` did (the parent exported its flags, `_export_overrides`) and
    sets up logging again."""
    from ai_gateway.web.app import create_app

    settings = load_settings()
    logging.basicConfig(level=settings.server.log_level.upper(), format=_LOG_FORMAT)
    tune_for_serving()
    return create_app(settings)


def _open_mode_allowed(settings: Settings, open_mode: bool) -> bool:
    """CONTRACT §2: open mode (no master key, no key in the database) binds loopback unless --allow-open."""
    if not open_mode:
        return True
    host = settings.server.host
    if not is_loopback_host(host) and not settings.server.allow_open:
        print(
            f"refusing to bind {host} in open mode: with no AIGW_MASTER_KEY and no API key in the database, "
            "anyone who can reach it may call models on your keys. Set AIGW_MASTER_KEY, bind 127.0.0.1, "
            "or pass --allow-open.",
            file=sys.stderr,
        )
        return False
    log.warning(
        "open mode: no AIGW_MASTER_KEY is set and the database holds no API key, so requests need no key "
        "(bound to %s; the admin API answers loopback clients only). Set AIGW_MASTER_KEY or create a key "
        "to require keys.",
        host,
    )
    return True


def _run(settings: Settings, workers: int = 1) -> int:
    import uvicorn

    from ai_gateway.errors import GatewayError
    from ai_gateway.policy.limits import startup_warning
    from ai_gateway.web.app import create_app, preflight

    for name, provider in settings.providers.items():
        if provider.not_configured:
            log.info("provider %s not configured: %s", name, provider.not_configured)
    warning = startup_warning(workers, settings.redis_url)
    if warning:
        log.warning(warning)
    options: dict[str, Any] = {
        "host": settings.server.host,
        "port": settings.server.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        "proxy_headers": False,  # client addresses come from the socket; X-Forwarded-* is not trusted
        "log_level": settings.server.log_level.lower(),
        "timeout_graceful_shutdown": 25,
    }
    try:
        # Several workers: each builds its own app from the environment, so this process only checks
        # what must hold before any of them starts. One worker: the app is built and served right here.
        app = None if workers > 1 else create_app(settings)
        open_mode = preflight(settings) if app is None else app.auth.open_mode
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except GatewayError as exc:  # the database is unreachable: the message names no DSN
        print(f"cannot start: {exc.message} (AIGW_DATABASE_URL)", file=sys.stderr)
        return 2
    if not _open_mode_allowed(settings, open_mode):
        if app is not None:
            app.store.close()
        return 2
    if app is None:
        uvicorn.run("ai_gateway.cli:app_from_env", factory=True, workers=workers, **options)
    else:
        uvicorn.run(app, **options)
    return 0


def _config_check(args: argparse.Namespace) -> int:
    settings, problems, warnings = check_config(config_path=args.config)
    if problems:
        print(f"configuration has {len(problems)} problem{'s' if len(problems) != 1 else ''}:")
        for p in problems:
            print(f"  ✗ {p.key}: {p.message}\n      fix: {p.fix}")
        return 1
    assert settings is not None
    for line in describe(settings):
        print(f"  {line}")
    for w in warnings:
        print(f"  ! warning: {w}")
    print("configuration OK")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "config":
        return _config_check(args)
    if args.command in admin_cli.COMMANDS:
        return admin_cli.run(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
