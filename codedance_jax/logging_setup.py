"""Quiet library logging for the binaries: a first run should show the project's progress, its
warnings and the answer, not pages of orbax, JAX and XLA INFO lines.

Each binary calls `quiet_library_logs()` first thing in its `main`; `--library_logs` turns the
libraries' INFO lines back on. Library warnings and errors always show.
"""
from __future__ import annotations

import logging
import os

from absl import flags
from absl import logging as absl_logging

_LIBRARY_LOGS = flags.DEFINE_bool("library_logs", False, "Show the INFO logs of libraries (orbax, absl, JAX, "
                                  "XLA); their warnings and errors show either way.")

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_INSTALLED = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)


def is_project_file(path: str) -> bool:
    """Source of this checkout, not of a library (the virtual environment may sit inside it)."""
    path = os.path.abspath(path)
    return path.startswith(_PROJECT_ROOT) and not any(part in path for part in _INSTALLED)


def _keep(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or is_project_file(record.pathname)


def quiet_library_logs() -> None:
    """Drops library records below WARNING, unless `--library_logs` was given."""
    if _LIBRARY_LOGS.value:
        return
    # XLA's C++ INFO lines; read when XLA first logs, so it must be set before the backend starts.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    handler = absl_logging.get_absl_handler()
    if _keep not in handler.filters:
        handler.addFilter(_keep)
