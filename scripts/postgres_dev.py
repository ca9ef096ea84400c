#!/usr/bin/env python
"""A throwaway PostgreSQL server for Dagster's instance storage (development and tests).

Uses the binaries of Debian's `postgresql` package (/usr/lib/postgresql/<version>/bin, newest version first;
`$PG_BIN` or `pg_ctl` on PATH also work): `initdb` into a fresh folder under the temp dir, trust authentication,
`pg_ctl start` on a free port of 127.0.0.1 (no Unix socket outside that folder), one database `dagster`.
initdb refuses to run as root, so as root the server runs as the `postgres` user (created by the Debian package)
and the folder is handed to it.

    python scripts/postgres_dev.py start [--dir DIR]   # prints DAGSTER_PG_URL=... and PG_DEV_DIR=...
    python scripts/postgres_dev.py stop DIR            # stops the server and deletes DIR

tests/pipelines/test_postgres.py starts and stops its server through `start()` / `stop()` below.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "postgres_dev.json"


@dataclass
class PostgresServer:
    folder: str  # everything of this server: data/, socket/, server.log, postgres_dev.json
    port: int
    user: str | None  # the OS user the server runs as (None: the current user)
    bin_dir: str

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/dagster"


def find_bin_dir() -> Path | None:
    """The folder holding initdb/pg_ctl: $PG_BIN, else the newest /usr/lib/postgresql/<ver>/bin, else PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(server: PostgresServer, *args: str) -> None:
    # `user=` drops to the unprivileged user for this one command (Python's setuid in the child).
    r = subprocess.run([str(Path(server.bin_dir) / args[0]), *args[1:]], user=server.user, capture_output=True,
                       text=True, timeout=120)
    if r.returncode != 0:
        log = Path(server.folder) / "server.log"
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"{args[0]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()} {tail}".strip())


def start(folder: str | Path | None = None) -> PostgresServer:
    """initdb + pg_ctl start + createdb dagster; returns the running server (state also in folder/postgres_dev.json)."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL binaries (Debian: apt-get install postgresql; or set PG_BIN)")
    root = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="medlvr-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    user = None
    if os.geteuid() == 0:  # initdb refuses root: run the server as `postgres` and give it the folder
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError("running as root needs the `postgres` user (Debian's postgresql package creates it)")
        user = "postgres"
        os.chown(root, pw.pw_uid, pw.pw_gid)
        if subprocess.run(["test", "-w", str(root)], user=user).returncode != 0:
            raise RuntimeError(f"{root} is not reachable by the postgres user (a parent folder is private): "
                               "pick a folder under the temp dir or leave --dir out")
    server = PostgresServer(folder=str(root), port=_free_port(), user=user, bin_dir=str(bin_dir))
    _run(server, "initdb", "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
    socket_dir = root / "socket"  # the server's Unix socket stays inside the folder (not /var/run/postgresql)
    _mkdir_as(server, socket_dir)
    _run(server, "pg_ctl", "-D", str(root / "data"), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
         f"-p {server.port} -c listen_addresses=127.0.0.1 -k {socket_dir} -c fsync=off "
         f"-c synchronous_commit=off -c max_connections=200", "start")
    _run(server, "createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", "dagster")
    tmp = root / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(server)))
    os.replace(tmp, root / STATE_FILE)
    return server


def create_database(server: PostgresServer, name: str) -> None:
    """Another empty database on the running server (e.g. one per test, so that no test sees another's history)."""
    _run(server, "createdb", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", name)


def _mkdir_as(server: PostgresServer, path: Path) -> None:
    path.mkdir(exist_ok=True)
    if server.user:
        pw = pwd.getpwnam(server.user)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def stop(folder: str | Path) -> None:
    """pg_ctl stop (fast: open connections are closed) and delete the folder."""
    root = Path(folder)
    state = root / STATE_FILE
    if not state.exists():
        raise FileNotFoundError(f"{state} missing: not a folder made by `postgres_dev.py start`")
    server = PostgresServer(**json.loads(state.read_text()))
    if (root / "data" / "postmaster.pid").exists():
        _run(server, "pg_ctl", "-D", str(root / "data"), "-m", "fast", "-w", "-t", "60", "stop")
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("start", help="start a server; prints DAGSTER_PG_URL and PG_DEV_DIR")
    s.add_argument("--dir", default=None, help="folder for the server (default: a new one under the temp dir)")
    t = sub.add_parser("stop", help="stop the server started in DIR and delete DIR")
    t.add_argument("dir")
    args = ap.parse_args(argv)
    try:
        if args.command == "start":
            server = start(args.dir)
            print(f"DAGSTER_PG_URL={server.url}")
            print(f"PG_DEV_DIR={server.folder}")
        else:
            stop(args.dir)
            print(f"stopped and removed {args.dir}")
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"postgres_dev: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
