"""The ``storage_options`` a config may set: an allow-list, checked before anything is opened.

A config is untrusted and copied into every run: it may tune how objects are read (block
sizes, timeouts, retries, the region, anonymous or requester-pays reads) but never lower
TLS, make written objects public, pick credentials or route requests through another host.
Those come from the environment only. A Python caller's options (``load_model(url,
storage_options=...)``, ``export``, ``predict``) are the choice of whoever runs the code and
are not checked here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

#: Option names that carry credentials (these names, or names containing the words): refused
#: with their own hint, since they are read from the environment (or the store's own
#: credential chain), never from a config that is copied into every run.
CREDENTIAL_OPTIONS = ("key", "access_key", "account_key", "connection_string", "customer_key")
CREDENTIAL_WORDS = ("secret", "token", "password", "credential", "ssecustomerkey", "sas")

#: Where a config may send requests: only to an endpoint the environment allows, listed in
#: :data:`ENDPOINTS_VARIABLE` or the environment's own ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3``
#: (an endpoint receives the environment's credentials).
ENDPOINTS_VARIABLE = "SHARDFLOW_STORAGE_ENDPOINTS"


def allowed_endpoints() -> set:
    """The endpoints this environment lets a config choose (normalised: no trailing slash)."""
    import os

    names = [
        *os.environ.get(ENDPOINTS_VARIABLE, "").split(","),
        os.environ.get("AWS_ENDPOINT_URL", ""),
        os.environ.get("AWS_ENDPOINT_URL_S3", ""),
    ]
    return {name.strip().rstrip("/") for name in names if name.strip()}


class Endpoint:
    """An allowed option whose value is a host that requests go to (see :func:`allowed_endpoints`)."""


@dataclass(frozen=True)
class Allowed:
    """What an allowed storage option takes: a value of ``kinds``, one of ``choices``, within
    ``[low, high]`` (a number). ``None`` (the file system's default) is always accepted."""

    kinds: tuple = (str,)
    choices: tuple = ()
    low: float | None = None
    high: float | None = None

    def problem(self, value) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) != (bool in self.kinds) or not isinstance(value, self.kinds):
            return f"expected {_KIND_NAMES[float if float in self.kinds else self.kinds[0]]}, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(str, self.choices))}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"must be between {self.low:g} and {self.high:g}, got {value!r}"
        return None


_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
_FLAG, _NAME = Allowed((bool,)), Allowed((str,))
_BYTES = Allowed((int,), low=1, high=2**30)  # a block of at most 1 GiB: a config cannot make a read exhaust memory
_SECONDS = Allowed((int, float), low=0.1, high=3600)
_COUNT = Allowed((int,), low=1, high=1024)

#: The storage options a config may set (s3fs, gcsfs, adlfs; a mapping: the keys allowed inside that
#: option). An ALLOW-list: none of them lowers TLS (``use_ssl``, ``verify``), makes written objects
#: public (``acl``, ``s3_additional_kwargs.ACL``), picks credentials (``profile``, ``token``,
#: ``client_id``, ``session_kwargs``) or routes requests through another host (``proxies``,
#: ``proxies_config``); those come from the environment only (``FSSPEC_S3='{...}'``, ``AWS_PROFILE``,
#: ``HTTPS_PROXY``, ``AWS_CA_BUNDLE``), as do options not listed here, which a config cannot vet.
CONFIG_STORAGE_OPTIONS = {
    # reads without credentials (public buckets), requester-pays buckets (true: the credentials' own account)
    "anon": _FLAG,
    "requester_pays": _FLAG,
    # block sizes and the caching of reads
    "default_block_size": _BYTES,
    "block_size": _BYTES,
    "blocksize": _BYTES,
    "default_cache_type": Allowed(
        (str,), ("none", "readahead", "bytes", "blockcache", "first", "parts", "all", "background", "adaptive")
    ),
    "default_fill_cache": _FLAG,
    "version_aware": _FLAG,
    "cache_regions": _FLAG,
    "fixed_upload_size": _FLAG,
    "max_concurrency": _COUNT,
    # gcsfs: the integrity check of writes, the timeout of a request
    "consistency": Allowed((str,), ("none", "size", "md5", "crc32c")),
    "requests_timeout": _SECONDS,
    # adlfs: the account (its own check below), timeouts, reads from the secondary replica
    "account_name": _NAME,
    "timeout": _SECONDS,
    "connection_timeout": _SECONDS,
    "read_timeout": _SECONDS,
    "socket_timeout": _SECONDS,
    "location_mode": Allowed((str,), ("primary", "secondary")),
    # endpoints: only those the environment allows
    "endpoint_url": Endpoint,
    "account_host": Endpoint,
    # s3fs: botocore's client and its Config (region, retries, timeouts; never proxies, TLS or certificates)
    "client_kwargs": {"region_name": _NAME, "endpoint_url": Endpoint},
    "config_kwargs": {
        "region_name": _NAME,
        "connect_timeout": _SECONDS,
        "read_timeout": _SECONDS,
        "max_pool_connections": _COUNT,
        "tcp_keepalive": _FLAG,
        "retries": {
            "max_attempts": Allowed((int,), low=0, high=100),
            "total_max_attempts": Allowed((int,), low=1, high=101),
            "mode": Allowed((str,), ("legacy", "standard", "adaptive")),
        },
        "s3": {"addressing_style": Allowed((str,), ("auto", "virtual", "path"))},
    },
    # s3fs: encryption at rest may be asked for (it only adds protection; no key is chosen here)
    "s3_additional_kwargs": {"ServerSideEncryption": Allowed((str,), ("AES256", "aws:kms", "aws:kms:dsse"))},
}


def check_storage_options(options) -> None:
    """Refuse a config's ``storage_options`` unless every option is in :data:`CONFIG_STORAGE_OPTIONS`
    with a value it accepts (an endpoint: one the environment allows).

    Only a config's options are checked: a Python caller's (``load_model(url,
    storage_options=...)``, ``export``, ``predict``) are the choice of whoever runs the code.

    Raises
    ------
    ValueError
        One line naming the option, and where it can be set instead (the environment).

    Examples
    --------
    >>> check_storage_options({"anon": True, "client_kwargs": {"region_name": "eu-west-1"}})
    >>> try:
    ...     check_storage_options({"client_kwargs": {"verify": False}})
    ... except ValueError as err:
    ...     print(str(err)[:74])
    config key 'storage_options.client_kwargs.verify': not an option a config
    """
    if not isinstance(options, dict):
        raise ValueError(
            f"config key 'storage_options': expected a mapping of option names to values, got {type(options).__name__}"
        )
    _check_options(options, CONFIG_STORAGE_OPTIONS, ())


def _check_options(options: dict, allowed: dict, parents: tuple) -> None:
    """Each of ``options`` (at the option path ``parents``) against its entry in ``allowed``."""
    for name, value in options.items():
        path = (*parents, str(name))
        key = f"config key 'storage_options.{'.'.join(path)}'"
        spec = allowed.get(str(name))
        if spec is None:
            lowered = str(name).lower()
            if lowered in CREDENTIAL_OPTIONS or any(word in lowered for word in CREDENTIAL_WORDS):
                raise ValueError(
                    f"{key}: credentials are not read from a config (it is copied into every run); "
                    "set them in the environment (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, "
                    "...) instead"
                )
            import difflib

            close = difflib.get_close_matches(str(name), [str(k) for k in allowed], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(
                f"{key}: not an option a config may set{hint} (it could weaken TLS, make objects "
                f"public, pick credentials or a proxy); set it in the environment instead "
                f"(FSSPEC_S3='{_nested_json(path)}', or AWS_PROFILE, HTTPS_PROXY, AWS_CA_BUNDLE)"
            )
        if isinstance(spec, dict):
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ValueError(f"{key}: expected a mapping of {', '.join(spec)}, got {value!r}")
            _check_options(value, spec, path)
        elif spec is Endpoint:
            if value is not None and str(value).rstrip("/") not in allowed_endpoints():
                raise ValueError(
                    f"{key}: {value!r} would receive the environment's credentials, and a config does "
                    f"not choose where they go; allow it in the environment "
                    f"({ENDPOINTS_VARIABLE}={value}, or AWS_ENDPOINT_URL)"
                )
        else:
            problem = spec.problem(value)
            if (
                problem is None
                and path == ("account_name",)
                and value is not None
                and not re.fullmatch(r"[a-z0-9]{3,24}", value)
            ):
                # adlfs puts it into the host name: nothing but an account's name may go there
                problem = f"{value!r} is not an Azure storage account name (3-24 lowercase letters and digits)"
            if problem:
                raise ValueError(f"{key}: {problem}")


def _nested_json(path: tuple) -> str:
    """``{"a": {"b": ...}}`` for the option path ``(a, b)``: how the environment sets it."""
    text = "..."
    for name in reversed(path):
        text = f"{{{json.dumps(name)}: {text}}}"
    return text
