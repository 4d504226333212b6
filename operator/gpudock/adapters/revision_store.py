"""Opens the revision store a ``--store`` URL names: ``sqlite:PATH`` (the default,
under the state dir) or ``etcd://HOST:PORT[/PREFIX]``."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from gpudock.core.revision import RevisionStore


def open_revision_store(url: str, node: str = "") -> RevisionStore:
    """``node``: the node whose records an etcd store holds (etcd_revisions.py: each
    node under ``<prefix>/nodes/<node>/``); SQLite is the node's own file."""
    if url.startswith("sqlite:"):
        from gpudock.adapters.sqlite_revisions import SqliteRevisionStore

        return SqliteRevisionStore(Path(url.removeprefix("sqlite:")))
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "etcd" or not parsed.hostname:
        raise ValueError(f"store {url!r} must be sqlite:PATH or etcd://HOST:PORT[/PREFIX]")
    from gpudock.adapters.etcd_revisions import DEFAULT_PREFIX, EtcdRevisionStore

    return EtcdRevisionStore(parsed.hostname, parsed.port or 2379,
                             prefix=parsed.path.rstrip("/") or DEFAULT_PREFIX, node=node)
