"""Logging for the command line: ``--log-level``, ``--debug``, and no double reports.

The library logs through :mod:`logging` with structured fields; the CLI decides
how much of that a person at a terminal sees:

* ``--log-level`` filters records (default ``WARNING``).
* Without ``--debug`` a record is printed on one line: its message, without
  the traceback of the exception attached to it.  ``--debug`` prints tracebacks.
  The passwords the command was given are removed either way.
* While a command starts (connects, subscribes, starts the applications),
  the runtime also logs every failure it then *returns* to the command
  (``child_start_failed``, ``application_start_failed``).  The command reports
  that failure itself, once, with the exit code that goes with it; logging it
  too would print it twice, the second time as an ERROR with a traceback.  So
  such records are held back until the command says it is running
  (:func:`mark_started`); after that, a start failure is a *restart* failure
  that nobody else reports, and it is logged.  ``--debug`` shows them all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from otpy.cli.errors import redact
from otpy.logs import JsonFormatter

__all__ = [
    "LEVELS",
    "CliLogging",
    "mark_started",
    "parse_level",
    "start_failure",
    "watch_application_started",
]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_START_EVENTS = frozenset({"child_start_failed", "application_start_failed"})


def parse_level(text: str) -> str:
    """``--log-level``'s type: a level name in any case.

    Raises:
        argparse.ArgumentTypeError: not one of :data:`LEVELS` (argparse turns it into a
            usage error, exit 2).
    """
    level = text.strip().upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid level {text!r}: choose one of {', '.join(LEVELS)} (any case)"
        )
    return level


class _Formatter(logging.Formatter):
    """Records for a terminal: one line without traceback unless ``debug``; secrets removed.

    The library never logs a password, but the CLI knows the ones it was given
    (``--dsn``, ``PGPASSWORD``) and removes them from whatever it prints anyway.
    """

    def __init__(self, *, debug: bool, secrets: Sequence[str], json: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.debug = debug
        self.secrets = secrets
        self._json = JsonFormatter() if json else None

    def format(self, record: logging.LogRecord) -> str:
        base = self._json.format if self._json is not None else super().format
        if self.debug:
            return redact(base(record), self.secrets)
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return redact(" ".join(base(record).split("\n")), self.secrets)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (pytest's capture replaces it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class CliLogging(logging.Filter):
    """The CLI's handler on the root logger, installed for one command (a context manager).

    It is also the filter that holds back start failures until
    :func:`mark_started` (see the module docstring).
    """

    def __init__(
        self, level: str, *, debug: bool, secrets: Sequence[str] = (), json: bool = False
    ) -> None:
        super().__init__()
        self.level = level
        self.debug = debug
        self.starting = True
        #: (application, error) of the first ``application_start_failed`` record.
        self.start_failure: tuple[str, BaseException | None] | None = None
        self._handler = _StderrHandler()
        self._handler.setFormatter(_Formatter(debug=debug, secrets=secrets, json=json))
        self._handler.addFilter(self)
        self._saved_level = logging.NOTSET
        #: Clean-ups run when the command ends (loggers changed for it).
        self.on_exit: list[Callable[[], None]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        """Hold back a start failure while starting (unless ``--debug``); pass the rest."""
        if self.starting and getattr(record, "event", None) in _START_EVENTS:
            return self.debug
        return True

    def __enter__(self) -> CliLogging:
        global _current
        root = logging.getLogger()
        self._saved_level = root.level
        # The root's level, not the handler's: a logger an application sets to
        # a level of its own (an example's INFO lines) is shown as it asks.
        root.setLevel(self.level)
        root.addHandler(self._handler)
        _current = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _current
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._saved_level)
        while self.on_exit:
            self.on_exit.pop()()
        _current = None


_current: CliLogging | None = None


def mark_started() -> None:
    """Tell the CLI's logging that the command is running: start failures are logged again.

    Called by each command once it is ready (streaming, applications started).
    Without a CLI logging context (the command used as a library) it does nothing.
    """
    if _current is not None:
        _current.starting = False


def watch_application_started(app_name: str) -> None:
    """Follow the start of application ``app_name`` through the ``otpy.application`` logger.

    ``otpy run`` hands control to :func:`otpy.run`, which tells the caller
    neither when the start is over nor why it failed, except through the
    ``application_started`` (INFO) and ``application_start_failed`` records.
    A filter on that logger (which sees every record, whatever the handler's
    level) calls :func:`mark_started` on the first and keeps the error of the
    second for :func:`start_failure`.
    """
    if _current is None:
        return
    current: CliLogging = _current
    logger = logging.getLogger("otpy.application")

    class _Watch(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            event = getattr(record, "event", None)
            if event == "application_started" and getattr(record, "application", None) == app_name:
                current.starting = False
            elif event == "application_start_failed" and current.start_failure is None:
                error = getattr(record, "error", None)
                if error is None and record.exc_info:
                    error = record.exc_info[1]
                if isinstance(error, BaseException):
                    application = str(getattr(record, "application", app_name))
                    current.start_failure = (application, error)
            # Seen for the above, shown only as --log-level says (its level was lowered).
            return record.levelno >= logging.getLogger().getEffectiveLevel()

    watcher = _Watch()
    saved = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addFilter(watcher)

    def undo() -> None:
        logger.removeFilter(watcher)
        logger.setLevel(saved)

    current.on_exit.append(undo)


def start_failure() -> tuple[str, BaseException | None] | None:
    """The application that failed to start and its error, as seen by
    :func:`watch_application_started`; None if none did (or nothing watched)."""
    return None if _current is None else _current.start_failure
