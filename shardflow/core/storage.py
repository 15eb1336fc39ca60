"""Where files live: local paths, or objects in a store that fsspec reaches (``s3://``, ``gs://``, ...).

A local path stays a :class:`pathlib.Path`. An object-store URL becomes a :class:`StorePath`: the
part of ``pathlib``'s API shardflow uses (``/``, ``name``, ``exists``, ``read_bytes``,
``write_text``, ``iterdir``, ...) over an fsspec file system. Code written against that API
runs on both, on the client and on the workers (a ``StorePath`` pickles as its URL and
options; each process builds its own client, with the credentials of its own environment).

Only the schemes in :data:`OBJECT_STORE_SCHEMES` are accepted: a config or a command line is
untrusted, and fsspec's other protocols (chained caches, HTTP, SSH, references) would let
one open connections or read files it names.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

#: Object stores shardflow reads and writes (``memory://`` is one process's store, for tests).
OBJECT_STORE_SCHEMES = ("s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "memory")


def url_scheme(path) -> str | None:
    """The scheme of a URL (``s3``, ``gs``, ...), None for a local path or a ``file://`` URL;
    also a URL that ``Path`` has folded to one slash (``s3:/b/k``). A drive letter is a path.

    Examples
    --------
    >>> url_scheme("s3://b/k"), url_scheme("s3:/b/k"), url_scheme("C:/data"), url_scheme("file:///x")
    ('s3', 's3', None, None)
    """
    match = re.match(r"^([A-Za-z][A-Za-z0-9+.-]+):/", str(path))
    return match.group(1).lower() if match and match.group(1).lower() != "file" else None


def check_url(url: str, what: str) -> None:
    """Refuse a URL shardflow does not open: another scheme, or a chained one (``a::b``).

    Raises
    ------
    ValueError
        Naming ``what`` (the config key or option) and the schemes that are accepted.
    """
    scheme = url_scheme(url)
    if "::" in str(url) or (scheme and scheme not in OBJECT_STORE_SCHEMES):
        raise ValueError(
            f"{what} {url!r}: {scheme or 'chained'}:// URLs are not read; give a local path or "
            f"one of {', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)}"
        )
    if scheme and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]", str(url)):
        raise ValueError(f"{what} {url!r}: not a URL of the form {scheme}://bucket/key")


def location(path, storage_options: dict | None = None):
    """``path`` as a :class:`StorePath` (an object-store URL) or a :class:`pathlib.Path`
    (anything else; ``file://`` URLs as their path). A ``StorePath`` passes through.

    Examples
    --------
    >>> location("file:///tmp/x").as_posix(), str(location("memory://bucket/x") / "y")
    ('/tmp/x', 'memory://bucket/x/y')
    """
    if isinstance(path, StorePath):
        return path if storage_options is None else StorePath(path.url, storage_options)
    if isinstance(path, Path):
        return path
    text = str(path)
    if url_scheme(text):
        return StorePath(text, storage_options)
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    return Path(text)


def is_remote(path) -> bool:
    return isinstance(path, StorePath) or url_scheme(path) is not None


def remove_tree(path) -> None:
    """Delete a directory (or prefix) and everything in it; nothing if it is not there."""
    if isinstance(path, StorePath):
        path.remove_tree()
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)


def open_file(path: str, mode: str = "rb", storage_options: dict | None = None):
    """Open a local file or an object (``path`` a string, as a :class:`Piece` carries it)."""
    if url_scheme(path):
        return StorePath(path, storage_options).open(mode)
    return open(path, mode)


class StorePath:
    """A file or prefix in an object store, with the pathlib methods shardflow uses.

    Directories do not exist in an object store: ``mkdir`` does nothing, and a prefix
    "exists" while an object lies under it. Listings are not cached (other processes write
    too). Writing one object is atomic: readers see the old object or the new one.

    Examples
    --------
    >>> p = StorePath("memory://bucket/run") / "etl" / "summary.json"
    >>> p.write_text("{}") and None
    >>> p.read_text(), p.name, str(p.parent), p.relative_to(StorePath("memory://bucket/run")).as_posix()
    ('{}', 'summary.json', 'memory://bucket/run/etl', 'etl/summary.json')
    """

    def __init__(self, url: str, storage_options: dict | None = None):
        check_url(url, "path")  # only the object stores: never http://, ssh://, chained protocols
        scheme = url_scheme(url)
        rest = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*:/+", "", str(url)).rstrip("/")
        self.protocol = scheme
        self.key = rest  #: the path in the store, without its scheme (``bucket/prefix/name``)
        self.storage_options = dict(storage_options or {})
        self._fs = None

    # ------------------------------------------------------------------ identity
    @property
    def url(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"StorePath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, StorePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other) -> bool:
        return str(self) < str(other)

    def __getstate__(self):
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state):
        self.__init__(state["url"], state["storage_options"])

    def __dask_tokenize__(self):
        return ("StorePath", self.url, sorted(self.storage_options.items(), key=str))

    @property
    def fs(self):
        """The fsspec file system (built once per process and options). Listings are not cached:
        other processes write to the same prefixes, and a cached listing would miss their objects."""
        if self._fs is None:
            import fsspec

            options = dict(self.storage_options)
            if self.protocol != "memory":
                options.setdefault("use_listings_cache", False)
            self._fs = fsspec.filesystem(self.protocol, **options)
        return self._fs

    def __truediv__(self, name) -> StorePath:
        return self._at(f"{self.key}/{str(name).strip('/')}")

    def _at(self, key: str) -> StorePath:
        """The path ``key`` in the same store: the scheme is checked already, the client shared."""
        other = object.__new__(StorePath)
        other.protocol, other.key, other.storage_options, other._fs = (
            self.protocol,
            key.strip("/"),
            self.storage_options,
            self._fs,
        )
        return other

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def parent(self) -> StorePath:
        return self._at(self.key.rsplit("/", 1)[0]) if "/" in self.key else self

    @property
    def bucket(self) -> str:
        return self.key.split("/", 1)[0]

    def with_name(self, name: str) -> StorePath:
        return self.parent / name

    def relative_to(self, other) -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(PurePosixPath(location(other).key))

    def as_posix(self) -> str:
        return self.url

    def expanduser(self) -> StorePath:
        return self

    def resolve(self) -> StorePath:
        return self

    def is_absolute(self) -> bool:
        return True

    # ------------------------------------------------------------------ queries
    def exists(self) -> bool:
        return self.fs.exists(self.key)

    def is_dir(self) -> bool:
        return self.fs.isdir(self.key)

    def is_file(self) -> bool:
        return self.fs.isfile(self.key)

    def info(self) -> dict:
        return self.fs.info(self.key)

    def iterdir(self):
        """The names directly under this prefix (objects and prefixes)."""
        return [self._at(key.rstrip("/")) for key in self.fs.ls(self.key, detail=False) if key.rstrip("/") != self.key]

    def rglob(self, pattern: str = "*"):
        """Every object under this prefix (``pattern`` must be ``*``: what shardflow lists)."""
        if pattern != "*":
            raise ValueError("StorePath.rglob lists every object: pattern must be '*'")
        return [self._at(key) for key in sorted(self.fs.find(self.key))]

    # ------------------------------------------------------------------ reading and writing
    def open(self, mode: str = "rb", **kwargs):
        return self.fs.open(self.key, mode, **kwargs)

    def read_bytes(self) -> bytes:
        return self.fs.cat_file(self.key)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> int:
        self.fs.pipe_file(self.key, bytes(data))
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do in an object store (``memory://`` keeps directories: made there)."""
        if self.protocol == "memory":
            self.fs.makedirs(self.key, exist_ok=True)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def remove_tree(self) -> None:
        try:
            self.fs.rm(self.key, recursive=True)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------- input files by name (strings)


def file_size(path: str, storage_options: dict | None = None) -> int:
    if url_scheme(path):
        return int(StorePath(path, storage_options).info()["size"])
    import os

    return os.path.getsize(path)


def file_identity(path: str, storage_options: dict | None = None) -> str:
    """What tells a changed file from an unchanged one without reading it: the absolute path,
    size and modification time; in an object store also its ETag (or generation, or MD5)."""
    if url_scheme(path):
        info = StorePath(path, storage_options).info()
        tag = next(
            (
                str(info[k])
                for k in ("ETag", "etag", "generation", "md5Hash", "content_md5", "VersionId")
                if info.get(k)
            ),
            "",
        )
        when = next(
            (str(info[k]) for k in ("LastModified", "mtime", "updated", "last_modified", "created") if info.get(k)), ""
        )
        return f"{path}\0{info.get('size')}\0{when}\0{tag}"
    import os

    st = os.stat(path)
    return f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"


def list_input_files(path: str, storage_options: dict | None = None):
    """The files ``path`` names: a glob's matches, every file under a directory (hidden and
    ``_``-prefixed names skipped), or the file itself; ``None`` when it
    names nothing. Object-store files come back as URLs.

    Examples
    --------
    >>> for name in ("a.csv", "_SUCCESS", "sub/b.csv", "_tmp/c.csv"):
    ...     _ = (StorePath("memory://lake/listing") / name).write_text("x\\n1\\n")
    >>> list_input_files("memory://lake/listing")
    ['memory://lake/listing/a.csv', 'memory://lake/listing/sub/b.csv']
    >>> list_input_files("memory://lake/listing/*.csv"), list_input_files("memory://lake/nothing")
    (['memory://lake/listing/a.csv'], None)
    """
    import glob
    import os

    pattern = any(ch in path for ch in "*?[")
    if url_scheme(path):
        base = StorePath(path, storage_options)
        fs = base.fs
        if pattern:  # one listing, with each match's type (not a request per match)
            matches = fs.glob(base.key, detail=True)
            return sorted(base._at(key).url for key, info in matches.items() if info.get("type") == "file")
        if fs.isdir(base.key):
            found = [base._at(key) for key in fs.find(base.key)]
            return sorted(p.url for p in found if _listed(p.relative_to(base).parts))
        return [base.url] if fs.isfile(base.key) else None
    if pattern:
        return sorted(glob.glob(path, recursive=True))
    if os.path.isdir(path):
        found = [p for p in Path(path).rglob("*") if p.is_file()]
        return sorted(str(p) for p in found if _listed(p.relative_to(path).parts))
    return [path] if os.path.isfile(path) else None


def _listed(parts) -> bool:
    """A file under a directory is read unless it (or a folder it is in) is hidden or ``_``-prefixed
    (``_SUCCESS``, ``.ipynb_checkpoints``, Spark's ``_temporary``)."""
    return not any(part.startswith((".", "_")) for part in parts)


# ---------------------------------------------------------------------- formats that take a store


def zarr_store(path, read_only: bool = False):
    """What ``zarr.open_group``/``open_array`` take for ``path``: the local path, or zarr's
    fsspec store for an object-store URL."""
    path = location(path)
    if isinstance(path, StorePath):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(path.url, storage_options=path.storage_options or None, read_only=read_only)
    return str(path)


def write_table(table, path) -> None:
    """Write a pyarrow Table as one Parquet file at ``path`` (local, or an object written whole)."""
    import pyarrow.parquet as pq

    path = location(path)
    if isinstance(path, StorePath):
        import io

        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path.write_bytes(buffer.getvalue())
    else:
        pq.write_table(table, str(path))
