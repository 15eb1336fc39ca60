"""Paths a config or a command names: local paths, ``file://`` URLs, and the object-store
URLs shardflow does not read or write yet."""

from __future__ import annotations

import re


def object_store_scheme(path) -> str | None:
    """The scheme of an object-store URL (``s3``, ``gs``, ...), None for a local path or a
    ``file://`` URL; also a URL that ``Path`` has folded to one slash (``s3:/b/k``). A drive
    letter (``C:/``) is a path.

    Examples
    --------
    >>> object_store_scheme("s3://b/k"), object_store_scheme("s3:/b/k"), object_store_scheme("C:/data")
    ('s3', 's3', None)
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+):/", str(path))
    return match.group(1).lower() if match and match.group(1).lower() != "file" else None
