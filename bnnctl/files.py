"""Files written whole or not at all, and torch files that carry their own checksum.

Every file bnnctl writes goes through a temporary file beside its target and a rename, so a reader
(or a kill at any moment) never sees half of it; a failure of the machine (a full disk, a read-only
folder) is one sentence, ``EnvironmentFailure``.

A torch file (checkpoint.pt, best.pt) is a zip archive; its end-of-central-directory record may
carry a comment, which torch.load ignores. bnnctl writes "bnnctl-sha256:<hex>" there: the SHA-256
of every byte before the comment's length field. torch.load still reads the file as it is.

A torch file is a pickle, and a pickle can name any Python function to call while it is read. bnnctl
reads torch files with torch's weights-only unpickler, which builds tensors and plain containers and
refuses every other global before calling anything, so a crafted file is refused without running.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import DamagedFile, EnvironmentFailure, UserError

# A temporary file is .<name>.tmp<pid> beside its target until the rename.
TEMPORARY_GLOB = ".*.tmp*"
# Beyond tensors and plain containers, the one type bnnctl's torch files hold: torch.__version__ (a str
# subclass) in the environment records of checkpoints written before they stored it as a plain str.
_TORCH_FILE_GLOBALS = [torch.torch_version.TorchVersion]


def environment_failure(path: Path, e: OSError) -> EnvironmentFailure:
    """The one sentence for an OSError met while writing path."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
              errno.EROFS: "the folder is on a read-only file system", errno.EACCES: "permission was denied",
              errno.EPERM: "permission was denied", errno.ENOENT: "its folder no longer exists"}
    why = reason.get(e.errno, e.strerror or type(e).__name__)
    return EnvironmentFailure(f"could not write {path}: {why}.")


def atomic_write_bytes(path: Path, *parts: bytes | memoryview) -> None:
    """Write ``parts`` one after the other through a temporary file and a rename, so that path is always
    whole; on failure the temporary is removed and the error is one sentence (EnvironmentFailure)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            for part in parts:
                fh.write(part)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise environment_failure(path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _temporary_of_a_live_process(tmp: Path) -> bool:
    pid = tmp.name.rpartition(".tmp")[2]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: Path, targets: list[str] | None = None) -> list[Path]:
    """Delete temporaries an interrupted write left in folder.

    Without ``targets``, every temporary (call with the folder's lock held). With ``targets`` (file names),
    only theirs, and only those whose writing process has ended: for a folder without a lock, where
    another bnnctl may be writing at the same moment.
    """
    removed = []
    for tmp in folder.glob(TEMPORARY_GLOB):
        if targets is not None and (tmp.name.rpartition(".tmp")[0][1:] not in targets
                                    or _temporary_of_a_live_process(tmp)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


# ---------------------------------------------------------------------------- checksummed torch files

_EOCD = b"PK\x05\x06"
_CHECKSUM_TAG = b"bnnctl-sha256:"


def _with_checksum(data: memoryview) -> tuple[memoryview, bytes]:
    """(the archive up to its comment length, the comment length and the checksum comment) without copying
    the archive: a checkpoint is hundreds of MB."""
    end = len(data) - 22  # torch writes no comment of its own: the end record is the last 22 bytes
    if end < 0 or data[end:end + 4] != _EOCD:
        raise ValueError("not a zip archive without a comment")
    body = data[:end + 20]
    comment = _CHECKSUM_TAG + hashlib.sha256(body).hexdigest().encode()
    return body, struct.pack("<H", len(comment)) + comment


def _verify_checksum(data: bytes, path: Path) -> bool:
    """True when data carries a checksum and it matches; False when it carries none (a version 1 file)."""
    end = data.rfind(_EOCD)
    if end < 0 or len(data) < end + 22:
        raise DamagedFile(f"{path} is not a readable bnnctl file: it is no complete torch archive (cut short, "
                          f"damaged, or another kind of file).")
    (length,) = struct.unpack("<H", data[end + 20:end + 22])
    comment = data[end + 22:]
    if length == 0 and not comment:
        return False
    if len(comment) != length or not comment.startswith(_CHECKSUM_TAG):
        raise DamagedFile(f"{path} is damaged: its checksum record is cut or altered; delete it or restore it "
                          f"from a copy.")
    if hashlib.sha256(data[:end + 20]).hexdigest().encode() != comment[len(_CHECKSUM_TAG):]:
        raise DamagedFile(f"{path} is damaged: its content does not match its checksum; delete it or restore "
                          f"it from a copy.")
    return True


def atomic_torch_save(obj: Any, path: Path) -> None:
    """torch.save with a checksum (see above), written atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with buffer.getbuffer() as data:
        body, trailer = _with_checksum(data)
        try:
            atomic_write_bytes(path, body, trailer)
        finally:
            body.release()


def load_torch_file(path: Path, what: str) -> tuple[Any, bool]:
    """(the object in a torch file, whether it carried a checksum), the checksum verified where there is one.

    ``what`` names the kind of file in the messages; a missing, unreadable or damaged file is one sentence.
    """
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a {what} file.")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    except OSError as e:
        raise UserError(f"{path} cannot be read ({e.strerror or type(e).__name__}).") from None
    checked = _verify_checksum(data, path)
    try:
        with torch.serialization.safe_globals(_TORCH_FILE_GLOBALS):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DamagedFile(f"{path} is refused: it holds Python objects or instructions that no bnnctl file holds (a "
                          f"file made to run code when loaded, another program's, or damaged), and none of them "
                          f"was run.") from None
    except Exception as e:  # noqa: BLE001 - a broken file is the user's to replace
        raise DamagedFile(f"{path} is not a readable bnnctl file ({type(e).__name__}); delete it or restore it "
                          f"from a copy.") from None
    return obj, checked
