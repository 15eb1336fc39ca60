"""The ``tracking:`` section of a job config: where runs are logged besides their run directory.

The section only; logging a run (:mod:`shardflow.pipelines.interface.tracking`) imports MLflow when a
config asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.core.constraints import Section, Text, option

#: Words in a URI's query or fragment parameter names that mark a credential (``?token=``,
#: ``&password=``, ``api_key``, an Azure SAS ``sig``).
URI_CREDENTIAL_WORDS = ("token", "password", "passwd", "pwd", "secret", "key", "auth", "credential", "sig")


def uri_credentials_problem(uri: str) -> str | None:
    """What in ``uri`` is a credential (a user name or password, a token parameter), or None.

    The value itself is never repeated: the message goes to logs and terminals.

    Examples
    --------
    >>> uri_credentials_problem("http://127.0.0.1:5000") is None
    True
    >>> uri_credentials_problem("http://me:pw@host:5000")[:32]
    'holds a user name or password; s'
    >>> uri_credentials_problem("https://host/?access_token=x")[:40]
    "holds a credential (the parameter 'acces"
    """
    from urllib.parse import parse_qsl, urlsplit

    try:
        parts = urlsplit(str(uri))
    except ValueError as err:
        return f"is not a valid URI ({err})"
    if "@" in parts.netloc:
        return (
            "holds a user name or password; set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD in the "
            "environment instead"
        )
    for text in (parts.query, parts.fragment):
        for name, _ in parse_qsl(text, keep_blank_values=True):
            if any(word in name.lower() for word in URI_CREDENTIAL_WORDS):
                return (
                    f"holds a credential (the parameter {name!r}); set MLFLOW_TRACKING_TOKEN (or "
                    "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD) in the environment instead"
                )
    return None


@dataclass(frozen=True)
class TrackingURI(Text):
    """An MLflow tracking URI without credentials: a config is copied into every run directory
    (``config.yaml``), so it is refused when the config is loaded, before anything is written."""

    def problem(self, value):
        return super().problem(value) or uri_credentials_problem(value)


@dataclass
class MLflowConfig:
    """``tracking.mlflow:`` the MLflow tracking server and experiment a run is logged to."""

    tracking_uri: str | None = option(
        None, check=TrackingURI("an MLflow tracking URI (http://host:5000, sqlite:///...) without credentials")
    )
    experiment: str = option("shardflow", check=Text("an experiment name", nonempty=True))


@dataclass
class TrackingConfig:
    """``tracking:`` where runs are logged besides their run directory (none by default)."""

    mlflow: MLflowConfig | None = option(None, check=Section())
