"""What a session sees of the host: an explicit allowlist, computed once per pool start.

The view holds the Python executable and its standard library (the install's own site-packages
hidden), the packages snippets may import with the distributions they require, this package,
a few command-line tools, a handful of /etc files, and exactly the shared libraries all of
those load (their ELF dependency closure). Everything appears at its host path, except the
packages, which are gathered in one private directory, SITE_PACKAGES. Nothing else of the host
exists there: not the home directory, not the checkout, not the rest of the virtualenv.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata as metadata
import os
import re
import shutil
import sys
import sysconfig

from . import elf

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
SITE_PACKAGES = "/sandbox/site-packages"
DEFAULT_PACKAGES = ("numpy", "PIL", "cv2", "matplotlib", "scipy", "sympy")
REQUIRED_PACKAGES = ("numpy", "PIL")   # the image capture needs them
TOOLS = ("sh", "echo", "sleep", "cat", "ls", "true")
TOOL_PATH = "/usr/local/bin:/usr/bin:/bin"
# /etc entries the interpreter needs; everything else there (shadow, ssh keys, ...) stays out.
ETC_ALLOWLIST = ("ld.so.cache", "ld.so.conf", "localtime", "fonts", "mime.types",
                 "nsswitch.conf", "host.conf")
TOP_LEVEL_LINKS = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")


class MissingPackage(ValueError):
    """A package on the sandbox's list is not installed where the pool runs."""


@dataclasses.dataclass(frozen=True)
class View:
    plan: tuple          # (action, argument, target): "dir" (mode), "symlink" (link text),
                         # "ro-bind" (host source), "tmpfs" (mode, read-only)
    python: str          # the interpreter, at its host path
    packages: tuple      # import names snippets may use
    distributions: tuple  # every distribution bound, requirements included
    tools: tuple
    libraries: int       # shared libraries outside the Python install and the packages

    def describe(self) -> str:
        return (f"view: an allowlist of {len(self.plan)} entries: Python {sys.version.split()[0]} "
                f"and its standard library; packages {', '.join(self.packages)} "
                f"({len(self.distributions)} distributions with their requirements); tools "
                f"{', '.join(self.tools)}; {self.libraries} shared libraries they load; the "
                f"host home, the checkout and other installed packages are absent")


class _Builder:
    """Collects mount actions keyed by target, so each path is made once."""

    def __init__(self):
        self.actions: dict = {}
        self.bound_dirs: list = []     # targets of directory binds
        self.bound_sources: list = []  # their host sources

    def covered(self, path: str) -> bool:
        """Already visible through a directory bind (at the path, or where its source went)."""
        return any(path == d or path.startswith(d + "/")
                   for d in self.bound_dirs + self.bound_sources)

    def _parents(self, path: str) -> None:
        parent = os.path.dirname(path)
        while parent != "/" and parent not in self.actions:
            self.actions[parent] = ("dir", "0711", parent)  # traversable, not listable
            parent = os.path.dirname(parent)

    def bind(self, source: str, target: str) -> None:
        if target in self.actions or self.covered(target):
            return
        self._parents(target)
        self.actions[target] = ("ro-bind", source, target)
        if os.path.isdir(source):
            self.bound_dirs.append(target)
            self.bound_sources.append(source)

    def expose(self, path: str, hops: int = 0) -> None:
        """Make host `path` visible at the same path, recreating the symlinks on the way."""
        path = os.path.normpath(os.path.abspath(path))
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            current = "/" + "/".join(parts[:i])
            if self.covered(current):
                return
            if os.path.islink(current) and hops < 40:
                link = os.readlink(current)
                if current not in self.actions:
                    self._parents(current)
                    self.actions[current] = ("symlink", link, current)
                resolved = os.path.join(os.path.dirname(current), link)
                return self.expose(os.path.join(resolved, *parts[i:]), hops + 1)
        if os.path.exists(path):
            self.bind(path, path)

    def plan(self) -> tuple:
        # Parents before children; at one depth, directories and links before mounts.
        order = {"dir": 0, "symlink": 1, "ro-bind": 2, "tmpfs": 3}
        return tuple(sorted(self.actions.values(),
                            key=lambda a: (a[2].count("/"), order[a[0]], a[2])))


def _base_paths() -> dict:
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix,
            "installed_base": sys.base_prefix, "installed_platbase": sys.base_exec_prefix}
    return sysconfig.get_paths(vars=base)


def python_executable() -> str:
    """The base interpreter (never a virtualenv's, whose packages are not the allowlist)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _requirement_names(dist) -> list:
    names = []
    for requirement in dist.requires or ():
        if "extra" in requirement.partition(";")[2]:
            continue  # optional extras are not installed for us
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
        if match:
            names.append(match.group(1))
    return names


def distributions(packages) -> list:
    """The installed distributions providing `packages` (import names) and everything they
    require; a requirement that is not installed is one whose marker excluded it."""
    providers = metadata.packages_distributions()
    queue = []
    for name in packages:
        if name not in providers:
            raise MissingPackage(
                f"sandbox package {name!r} is not installed for {sys.executable}; install it "
                f"(`make setup` installs the defaults) or leave it out of "
                f"InterpreterPool(packages=...)")
        queue += providers[name]
    found: dict = {}
    while queue:
        name = queue.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if dist.files is None:  # e.g. a distro package without a RECORD: nothing says what to mount
            raise MissingPackage(f"sandbox package distribution {name!r} (in {dist.locate_file('')}) lists no files; "
                                 f"install it with pip so the sandbox can mount exactly its files")
        found[key] = dist
        queue += _requirement_names(dist)
    return list(found.values())


def _top_level_entries(dist) -> set:
    """Top-level names the distribution installed into its site directory."""
    entries = set()
    for file in dist.files or ():
        top = file.parts[0]
        if top not in ("..", "__pycache__") and not top.endswith(".pth"):
            entries.add(top)
    return entries


@functools.lru_cache(maxsize=8)
def build(packages: tuple = DEFAULT_PACKAGES) -> View:
    builder = _Builder()
    builder.actions["/tmp"] = ("tmpfs", "1777", "/tmp")   # made by isolation, per session
    for name in TOP_LEVEL_LINKS:
        if os.path.islink("/" + name):
            builder.actions["/" + name] = ("symlink", os.readlink("/" + name), "/" + name)

    python = python_executable()
    paths = _base_paths()
    stdlib = os.path.realpath(paths["stdlib"])
    builder.expose(stdlib)
    builder.expose(os.path.realpath(os.path.join(paths["platstdlib"], "lib-dynload")))
    for key in ("purelib", "platlib"):  # the base install's own packages stay hidden
        site = os.path.realpath(paths[key])
        if site.startswith(stdlib + "/") and os.path.isdir(site):
            builder.actions[site] = ("tmpfs", "0755", site)
    builder.expose(python)

    builder.actions[SITE_PACKAGES] = ("dir", "0755", SITE_PACKAGES)  # listable: imports scan it
    builder.actions[os.path.dirname(SITE_PACKAGES)] = ("dir", "0711", "/sandbox")
    dists = distributions(tuple(dict.fromkeys(REQUIRED_PACKAGES + tuple(packages))))
    elf_roots = [python]
    for dist in dists:
        site = str(dist.locate_file(""))
        for entry in sorted(_top_level_entries(dist)):
            source = os.path.join(site, entry)
            if os.path.exists(source):
                builder.bind(source, f"{SITE_PACKAGES}/{entry}")
        elf_roots += [str(dist.locate_file(f)) for f in dist.files or ()
                      if ".so" in f.name and f.parts[0] != ".."]
    builder.bind(PACKAGE_DIR, f"{SITE_PACKAGES}/sandbox")

    tools = []
    for tool in TOOLS:
        path = shutil.which(tool, path=TOOL_PATH)
        if path is not None:
            tools.append(tool)
            builder.expose(path)
            elf_roots.append(path)
    for name in ETC_ALLOWLIST:
        builder.expose("/etc/" + name)

    dynload = os.path.join(paths["platstdlib"], "lib-dynload")
    if os.path.isdir(dynload):
        elf_roots += [os.path.join(dynload, f) for f in os.listdir(dynload) if ".so" in f]
    libraries = [lib for lib in sorted(elf.closure(elf_roots, elf.search_dirs()))
                 if not builder.covered(lib)]
    for library in libraries:
        builder.expose(library)
    return View(plan=builder.plan(), python=python, packages=tuple(packages),
                distributions=tuple(sorted(d.metadata["Name"] for d in dists)),
                tools=tuple(tools), libraries=len(libraries))
