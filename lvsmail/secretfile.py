"""Reading a secret from a file only its owner can read (credentials, API keys, VRRP keys).

A secret lvsmail reads must be a regular file owned by the user lvsmail runs as
(root on directors and real servers) with no group or other access, like an ssh
private key: a file anyone else could have written or read is refused with the
command that fixes it. The checks are made on the opened descriptor (``fstat``)
and links are not followed, so nothing can change between check and read.
"""

from __future__ import annotations

import os
import stat


class SecretFileError(ValueError):
    """The file cannot serve as a secret; the message names it and says how to fix it."""


def read_secret_file(path: str, what: str, *, owner_uid: int, max_bytes: int) -> bytes:
    """The bytes of ``path`` after the ownership/mode checks; ``what`` names the file in messages."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SecretFileError(f"{what} {path}: cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{what} {path}: not a regular file")
        if st.st_uid != owner_uid:
            raise SecretFileError(f"{what} {path}: owned by uid {st.st_uid}, must be owned by uid {owner_uid}"
                                  f"{' (root)' if owner_uid == 0 else ''}; chown root:root {path}")
        if st.st_mode & 0o077:
            raise SecretFileError(f"{what} {path}: mode {stat.S_IMODE(st.st_mode):04o} lets group or others "
                                  f"access it; chmod 600 {path}")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SecretFileError(f"{what} {path}: larger than {max_bytes} bytes")
    return data
