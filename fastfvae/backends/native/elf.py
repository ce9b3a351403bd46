"""Checks a native library file before it is loaded: ``dlopen`` maps the segments its ELF
headers name, and reading one that lies past the end of a truncated file raises SIGBUS, which
kills the process instead of raising. A damaged file is refused with a reason instead, as a
missing one is (fastfvae/backends/native/library.py)."""
from __future__ import annotations

import struct
from pathlib import Path

_ELF_MAGIC = b"\x7fELF"
_PT_LOAD = 1


def elf_damage(path: Path) -> str | None:
    """Why ``path`` is not a whole ELF shared object (None when its header, program headers,
    loadable segments and section header table all lie within the file). dlopen maps the
    segments a header names: one past the end of a truncated file is read as SIGBUS, which kills
    the process instead of raising, so a damaged file is refused here first."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            header = f.read(64)
            if len(header) < 52 or header[:4] != _ELF_MAGIC or header[4] not in (1, 2) or header[5] not in (1, 2):
                return f"not an ELF file: {len(header)}-byte header of a {size}-byte file"
            wide, order = header[4] == 2, "<" if header[5] == 1 else ">"
            if wide and len(header) < 64:
                return f"truncated ELF header ({size} bytes)"
            # e_phoff, e_shoff, then e_phentsize, e_phnum, e_shentsize, e_shnum (ELF64 / ELF32 layouts)
            if wide:
                phoff, shoff = struct.unpack_from(order + "QQ", header, 0x20)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 0x36)
            else:
                phoff, shoff = struct.unpack_from(order + "II", header, 0x1C)
                phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", header, 0x2A)
            if shoff + shentsize * shnum > size:
                return f"truncated: its section header table ends at byte {shoff + shentsize * shnum}, the file has {size}"
            if phoff + phentsize * phnum > size:
                return f"truncated: its program headers end at byte {phoff + phentsize * phnum}, the file has {size}"
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError as error:
        return f"cannot be read ({error})"
    for i in range(phnum):
        entry = table[i * phentsize:(i + 1) * phentsize]
        if wide:  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz
            p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIQQQQ", entry)
        else:  # p_type, p_offset, p_vaddr, p_paddr, p_filesz
            p_type, p_offset, _, _, p_filesz = struct.unpack_from(order + "IIIII", entry)
        if p_type == _PT_LOAD and p_offset + p_filesz > size:
            return f"truncated: a loadable segment ends at byte {p_offset + p_filesz}, the file has {size}"
    return None
