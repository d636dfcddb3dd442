"""The shared libraries an ELF file loads, found the way the dynamic loader finds them.

Reads only the program headers and the dynamic section (DT_NEEDED, DT_RPATH, DT_RUNPATH,
PT_INTERP) of 64-bit little-endian files; anything else is treated as having no dependencies.
"""
from __future__ import annotations

import glob
import os
import struct

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 0, 1, 5, 15, 29
DEFAULT_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")


def _read_cstring(handle, offset: int) -> str:
    handle.seek(offset)
    raw = bytearray()
    while b"\0" not in raw and len(raw) < 4096:
        chunk = handle.read(256)
        if not chunk:
            break
        raw += chunk
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def dynamic_info(path: str):
    """(needed names, search dirs from RPATH/RUNPATH with $ORIGIN expanded, interpreter or None)."""
    with open(path, "rb") as handle:
        ident = handle.read(64)
        if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            return [], [], None
        phoff, = struct.unpack_from("<Q", ident, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", ident, 0x36)
        handle.seek(phoff)
        table = handle.read(phentsize * phnum)
        loads, dynamic, interp = [], None, None
        for i in range(phnum):
            p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
                "<IIQQQQ", table, i * phentsize)
            if p_type == PT_LOAD:
                loads.append((p_vaddr, p_offset, p_filesz))
            elif p_type == PT_DYNAMIC:
                dynamic = (p_offset, p_filesz)
            elif p_type == PT_INTERP:
                interp = _read_cstring(handle, p_offset)
        if dynamic is None:
            return [], [], interp
        handle.seek(dynamic[0])
        raw = handle.read(dynamic[1])
        entries = [struct.unpack_from("<qQ", raw, i) for i in range(0, len(raw) - 15, 16)]
        strtab = next((value for tag, value in entries if tag == DT_STRTAB), None)
        if strtab is None:
            return [], [], interp
        # DT_STRTAB is an address; the PT_LOAD segment holding it maps it to a file offset.
        base = next((offset + strtab - vaddr for vaddr, offset, size in loads
                     if vaddr <= strtab < vaddr + size), None)
        if base is None:
            return [], [], interp
        needed, dirs = [], []
        origin = os.path.dirname(os.path.abspath(path))
        for tag, value in entries:
            if tag == DT_NULL:
                break
            if tag == DT_NEEDED:
                needed.append(_read_cstring(handle, base + value))
            elif tag in (DT_RPATH, DT_RUNPATH):
                text = _read_cstring(handle, base + value)
                dirs += [d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
                         for d in text.split(":") if d]
        return needed, dirs, interp


def _conf_dirs(path: str = "/etc/ld.so.conf", depth: int = 0) -> list:
    """Library directories named by ld.so.conf and the files it includes."""
    dirs = []
    try:
        with open(path) as conf:
            lines = [line.split("#", 1)[0].strip() for line in conf]
    except OSError:
        return dirs
    for line in lines:
        if line.startswith("include ") and depth < 4:
            for included in sorted(glob.glob(line.split(None, 1)[1])):
                dirs += _conf_dirs(included, depth + 1)
        elif line.startswith("/"):
            dirs.append(line)
    return dirs


def search_dirs() -> list:
    return list(dict.fromkeys(_conf_dirs() + list(DEFAULT_DIRS)))


def closure(roots, system_dirs) -> set:
    """Every file the dynamic loader would open to load all of `roots` (paths as found,
    not resolved: symlinks are the caller's to recreate)."""
    found, queue = set(), list(roots)
    seen = set()
    while queue:
        path = queue.pop()
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            needed, dirs, interp = dynamic_info(real)
        except OSError:
            continue
        if interp and os.path.exists(interp):
            found.add(interp)
            queue.append(interp)
        for name in needed:
            candidates = [name] if "/" in name else [os.path.join(d, name)
                                                     for d in dirs + system_dirs]
            hit = next((c for c in candidates if os.path.isfile(c)), None)
            if hit is not None:  # optional libraries that are absent are the loader's business
                found.add(hit)
                queue.append(hit)
    return found
