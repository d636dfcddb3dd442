"""Sandboxed Python interpreters for model-written code (importable without the project)."""
from .isolation import IsolationReport, IsolationUnavailable
from .limits import Limits
from .pool import ExecResult, InterpreterPool, SandboxError
from .view import MissingPackage

__all__ = ["ExecResult", "InterpreterPool", "IsolationReport", "IsolationUnavailable", "Limits",
           "MissingPackage", "SandboxError"]
