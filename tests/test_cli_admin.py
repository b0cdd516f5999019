"""The admin commands of the CLI (CONTRACT §5) against a real gateway: tables, --json, pagination, and
one-line errors (never a traceback) for a gateway that is down or refuses the key; `db upgrade`."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai_gateway import admin_cli
from ai_gateway.cli import main
from ai_gateway.stores.migrate import head_revision
from tests.support import Proc, Upstreams, free_port, http, start_gateway

MASTER = "mk-cli-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstreams: Upstreams) -> Iterator[Proc]:
    proc = start_gateway(
        tmp_path_factory.mktemp("cli"), {**upstreams.env(), "AIGW_MASTER_KEY": MASTER}, name="gw-cli"
    )
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def _master(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIGW_MASTER_KEY", MASTER)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tenants_create_and_list_as_table_and_json(gw: Proc, capsys: pytest.CaptureFixture[str]) -> None:
    name = f"acme-{secrets.token_hex(3)}"
    code, out, _ = run(
        capsys,
        "tenants",
        "create",
        name,
        "--rpm",
        "60",
        "--budget-usd",
        "12.50",
        "--budget-period",
        "month",
        "--url",
        gw.url,
    )
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["ID", "NAME", "RPM", "TPM", "BUDGET", "CREATED"]
    assert name in row and "$12.5/month" in row and " 60 " in row
    assert header.index("NAME") == row.index(name)  # aligned columns
    code, out, _ = run(capsys, "tenants", "list", "--url", gw.url, "--json")
    assert code == 0 and name in [t["name"] for t in json.loads(out)["data"]]


def test_keys_create_list_revoke(gw: Proc, capsys: pytest.CaptureFixture[str]) -> None:
    tenant = f"k-{secrets.token_hex(3)}"
    run(capsys, "tenants", "create", tenant, "--url", gw.url)
    code, out, _ = run(
        capsys, "keys", "create", "--tenant", tenant, "--name", "bot", "--scopes", "chat", "--models", "ollama/*, openai/gpt-4o-mini",
        "--expires-at", "2099-01-01T00:00:00Z", "--url", gw.url,
    )  # fmt: skip
    assert code == 0
    key = next(line for line in out.splitlines() if line.startswith("sk-aigw-"))
    assert "shown once" in out and "ollama/*,openai/gpt-4o-mini" in out and "2099-01-01T00:00:00" in out
    assert (
        http(
            "POST",
            gw.url + "/v1/chat",
            {"prompt": "x", "model": "ollama/llama3.2"},
            headers={"x-api-key": key},
        ).status
        == 200
    )

    code, out, _ = run(capsys, "keys", "list", "--tenant", tenant, "--url", gw.url)
    assert code == 0 and key not in out and f"sk-aigw-...{key[-4:]}" in out and "active" in out
    key_id = out.splitlines()[1].split()[0]
    code, out, _ = run(capsys, "keys", "revoke", key_id, "--url", gw.url)
    assert code == 0 and out.startswith(f"revoked {key_id}")
    code, out, _ = run(capsys, "keys", "list", "--tenant", tenant, "--url", gw.url, "--json")
    assert json.loads(out)["data"][0]["revoked_at"] is not None
    assert http("POST", gw.url + "/v1/chat", {"prompt": "x"}, headers={"x-api-key": key}).status == 401


def test_list_follows_the_cursor_to_the_last_page(
    gw: Proc, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = f"p-{secrets.token_hex(3)}"
    run(capsys, "tenants", "create", tenant, "--url", gw.url)
    for i in range(5):
        run(capsys, "keys", "create", "--tenant", tenant, "--name", f"k{i}", "--url", gw.url, "--json")
    monkeypatch.setattr(admin_cli, "_PAGE", 2)
    code, out, _ = run(capsys, "keys", "list", "--tenant", tenant, "--url", gw.url, "--json")
    assert code == 0 and [k["name"] for k in json.loads(out)["data"]] == [f"k{i}" for i in range(5)]


def test_errors_are_one_line_with_the_reason(
    gw: Proc, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "tenants", "list", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "connection refused" in err and "--url" in err
    code, _, err = run(capsys, "tenants", "create", "bad name", "--url", gw.url)
    assert code == 1 and err.startswith("error: 400: name:")
    name = f"dup-{secrets.token_hex(3)}"
    run(capsys, "tenants", "create", name, "--url", gw.url)
    code, _, err = run(capsys, "tenants", "create", name, "--url", gw.url)
    assert code == 1 and "409" in err and "already exists" in err
    code, _, err = run(
        capsys, "keys", "create", "--tenant", name, "--name", "n", "--scopes", "root", "--url", gw.url
    )
    assert code == 1 and "scopes" in err
    code, _, err = run(capsys, "keys", "list", "--url", "ftp://example")
    assert code == 2 and "invalid --url" in err
    monkeypatch.setenv("AIGW_MASTER_KEY", "wrong")
    code, _, err = run(capsys, "keys", "list", "--url", gw.url)
    assert code == 1 and "401" in err and "was refused" in err
    monkeypatch.delenv("AIGW_MASTER_KEY")
    code, _, err = run(capsys, "keys", "list", "--url", gw.url)
    assert code == 1 and "AIGW_MASTER_KEY is not set" in err
    monkeypatch.setenv("AIGW_MASTER_KEY", MASTER)
    _, out, _ = run(
        capsys,
        "keys",
        "create",
        "--tenant",
        name,
        "--name",
        "chat-only",
        "--scopes",
        "chat",
        "--url",
        gw.url,
        "--json",
    )
    monkeypatch.setenv("AIGW_MASTER_KEY", json.loads(out)["key"])
    code, _, err = run(capsys, "keys", "list", "--url", gw.url)
    assert code == 1 and "403" in err and "admin scope" in err


def _subprocess(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    return subprocess.run(
        [sys.executable, "-m", "ai_gateway", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_command_itself_prints_no_traceback(tmp_path: Path) -> None:
    done = _subprocess(
        ["keys", "list", "--url", f"http://127.0.0.1:{free_port()}"], {"AIGW_MASTER_KEY": MASTER}, tmp_path
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("error: cannot reach the gateway") and "Traceback" not in done.stderr


def test_db_upgrade(tmp_path: Path) -> None:
    env = {"AIGW_DATABASE_URL": f"sqlite:///{tmp_path / 'fresh.db'}"}
    first = _subprocess(["db", "upgrade"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"upgraded from empty to revision {head_revision()}" in first.stdout
    again = _subprocess(["db", "upgrade"], env, tmp_path)
    assert f"already at revision {head_revision()}" in again.stdout
    down = _subprocess(
        ["db", "upgrade"],
        {"AIGW_DATABASE_URL": f"postgresql://u:pw-SECRET@127.0.0.1:{free_port()}/x"},
        tmp_path,
    )
    assert down.returncode == 2 and "database is unreachable" in down.stderr
    assert "pw-SECRET" not in down.stderr + down.stdout and "Traceback" not in down.stderr


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_upgrades_take_turns(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Replicas starting together: the migration lock makes every one succeed, the schema made once."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    base = {k: v for k, v in os.environ.items() if not k.startswith("AIGW_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ai_gateway", "db", "upgrade"],
            env={**base, "AIGW_DATABASE_URL": url},
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sum("upgraded from empty" in out for out, _ in outputs) == 1
