"""Crafted pickles, as a hostile user writes them: each runs code when fully unpickled
(plain `pickle` or `torch.load(weights_only=False)`) and creates a marker file. The
tests put them where the project reads torch files and check that nothing ran."""

from __future__ import annotations

import os
import pickle
import subprocess
from pathlib import Path

import torch


class Calls:
    """Unpickling this calls `fn(*args)`."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def payloads(marker: Path) -> dict[str, object]:
    """The global each payload makes the pickle name -> the payload (creates `marker`)."""
    m = str(marker)
    return {
        "posix.system": Calls(os.system, f"touch '{m}'"),  # how pickle spells os.system
        "os.popen": Calls(os.popen, f"touch '{m}'"),
        "subprocess.Popen": Calls(subprocess.Popen, ["touch", m]),
        "builtins.eval": Calls(eval, f"open({m!r}, 'w').close()"),
        "builtins.exec": Calls(exec, f"open({m!r}, 'w').close()"),
    }


def raw_os_system(marker: Path) -> bytes:
    """A handwritten protocol-0 pickle naming `os.system` literally (not a torch file)."""
    return b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."


def crafted_files(folder: Path, marker: Path, wrap=lambda payload: payload) -> dict[str, Path]:
    """One file per global: `torch.save(wrap(payload))` (zip format), plus the raw
    handwritten pickle; the global each names -> its path."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, payload in payloads(marker).items():
        files[name] = folder / f"{name}.pt"
        torch.save(wrap(payload), files[name])
    files["os.system"] = folder / "os.system.pt"
    files["os.system"].write_bytes(raw_os_system(marker))
    return files


def is_live(path: Path, marker: Path) -> bool:
    """Whether full unpickling of `path` runs its payload (creates `marker`)."""
    marker.unlink(missing_ok=True)
    data = path.read_bytes()
    if data.startswith(b"PK"):
        loaded = torch.load(path, weights_only=False)
    else:
        loaded = pickle.loads(data)
    for value in _values(loaded):  # a started process: wait for it
        if isinstance(value, subprocess.Popen):
            value.wait()
        elif hasattr(value, "close"):  # os.popen's pipe: closing waits
            value.close()
    ran = marker.exists()
    marker.unlink(missing_ok=True)
    return ran


def _values(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _values(value)
    else:
        yield tree


def huge_png(width: int = 15000, height: int = 15000) -> bytes:
    """A PNG whose header says `width` x `height` RGB (a few hundred bytes: its pixel data
    is missing, which only matters to a reader that decodes it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
