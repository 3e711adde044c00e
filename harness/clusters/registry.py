"""Open a side of a migration from a URL: the one place that knows every adapter's address form.

    fake://?shards=2&replicas=2&seed=0            the in-memory HNSW fake cluster
    pgvector://user:pass@host:5432/db?table=items  PostgreSQL + pgvector (sslmode etc. pass through)
    qdrant://:memory:                              Qdrant local mode, in this process
    qdrant://host:6333?collection=items            a Qdrant server (add &https=1, &api_key=...)
    qdrant+local:///path/to/dir?collection=items   Qdrant local mode persisted in a directory
    milvus+lite:///path/to/file.db?collection=items  Milvus Lite, embedded, in one file
    http://host:port?timeout=5                     a cluster server (`vecmig cluster serve`);
                                                   its token from $VECMIG_CLUSTER_TOKEN, or
                                                   &token_file=PATH (mode 0600), or
                                                   &token_env=NAME (another variable)

`pgvector://auto`, `qdrant+local://auto` and `milvus+lite://auto` are for `vecmig loadtest`,
which starts such a side itself and passes the real URL on; here they are refused.

Engine client packages are imported only when their scheme is used (`pip install
'vecmig[engines]'` brings them all).

Other packages add schemes through the entry-point group `vecmig.adapters`: an entry point
named after the scheme whose object opens a side, `open(url, dim, metric) -> ClusterPort`.
With this in a package's pyproject.toml, `vecmig serve --old myengine://host/db` works:

    [project.entry-points."vecmig.adapters"]
    myengine = "myengine.vecmig:open_side"

The schemes above come first; an entry point cannot replace one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from urllib.parse import SplitResult, parse_qs, unquote, urlencode, urlsplit, urlunsplit

from .base import ClusterPort, Metric

__all__ = [
    "ADAPTER_GROUP",
    "CLUSTER_TOKEN_ENV",
    "SCHEMES",
    "OpenSide",
    "adapter_schemes",
    "open_cluster",
    "schemes",
]

CLUSTER_TOKEN_ENV = "VECMIG_CLUSTER_TOKEN"
"""Where a cluster server's token is found by default, by the server and by its clients."""

SCHEMES = ("fake", "pgvector", "qdrant", "qdrant+local", "milvus+lite", "http")
"""The schemes vecmig opens itself."""
AUTO_SCHEMES = ("pgvector", "qdrant+local", "milvus+lite")
"""Schemes whose `scheme://auto` means "a throwaway side that `vecmig loadtest` starts"."""
ADAPTER_GROUP = "vecmig.adapters"
"""The entry-point group through which installed packages add schemes."""

OpenSide = Callable[[str, int, Metric], ClusterPort]
"""What a `vecmig.adapters` entry point loads: `open(url, dim, metric)` gives the side."""


def adapter_schemes() -> dict[str, EntryPoint]:
    """The schemes installed packages register (entry-point group `vecmig.adapters`), by
    lower-cased name, leaving out those that would shadow one of vecmig's own."""
    found = {ep.name.lower(): ep for ep in entry_points(group=ADAPTER_GROUP)}
    own = set(_OPENERS)
    return {name: ep for name, ep in sorted(found.items()) if name not in own}


def schemes() -> tuple[str, ...]:
    """Every scheme `open_cluster` knows: vecmig's own, then the installed packages'."""
    return (*SCHEMES, *adapter_schemes())


def open_cluster(url: str, dim: int, metric: Metric | str = Metric.COSINE) -> ClusterPort:
    """The side at `url`, holding `dim`-dimensional vectors compared by `metric`."""
    metric = Metric(metric)
    scheme, _, rest = url.partition("://")
    if not rest and "://" not in url:
        raise ValueError(f"{url!r} is not a cluster URL; it should start with one of {_valid()}")
    scheme = scheme.lower()
    if rest.split("?")[0] == "auto" and scheme in AUTO_SCHEMES:
        raise ValueError(
            f"{url!r}: 'auto' asks `vecmig loadtest` to start a throwaway {scheme} side; "
            "only it does that. Elsewhere give the side's real address"
        )
    opener = _OPENERS.get(scheme)
    if opener is not None:
        parts = urlsplit(url)
        return opener(url, parts, _query(url, parts.query), dim, metric)
    registered = adapter_schemes().get(scheme)
    if registered is not None:
        return _open_registered(registered, url, dim, metric)
    raise ValueError(f"{url!r} has unknown scheme {scheme!r}; valid schemes: {_valid()}")


# Each of vecmig's own schemes: (url, its parts, its query, dim, metric) -> the side. An
# opener takes the query parameters it knows and refuses any left over.
_Opener = Callable[[str, SplitResult, dict[str, str], int, Metric], ClusterPort]


def _fake(url: str, parts: SplitResult, query: dict[str, str], dim: int, m: Metric) -> ClusterPort:
    from .fake import FakeCluster

    shards = _int(url, "shards", query.pop("shards", "2"))
    replicas = _int(url, "replicas", query.pop("replicas", "2"))
    seed = _int(url, "seed", query.pop("seed", "0"))
    _no_more(url, query)
    return FakeCluster(dim, m, shards=shards, replicas=replicas, seed=seed)


def _pgvector(
    url: str, parts: SplitResult, query: dict[str, str], dim: int, m: Metric
) -> ClusterPort:
    from .pgvector import PgVectorCluster

    table = query.pop("table", "vecmig_items")
    dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
    return PgVectorCluster.connect(dsn, dim, m, table=table)


def _qdrant_server(
    url: str, parts: SplitResult, query: dict[str, str], dim: int, m: Metric
) -> ClusterPort:
    if parts.netloc == ":memory:" and not parts.path:
        return _qdrant(dim, m, query, location=":memory:")
    if not parts.hostname:
        raise ValueError(
            f"{url!r} names no Qdrant host; use qdrant://host:6333 or qdrant://:memory:"
        )
    https = query.pop("https", "0") in ("1", "true", "yes")
    host = f"{'https' if https else 'http'}://{parts.hostname}:{parts.port or 6333}"
    return _qdrant(dim, m, query, url=host, api_key=query.pop("api_key", None))


def _qdrant_local(
    url: str, parts: SplitResult, query: dict[str, str], dim: int, m: Metric
) -> ClusterPort:
    return _qdrant(dim, m, query, path=_path(url, parts.netloc, parts.path))


def _milvus_lite(
    url: str, parts: SplitResult, query: dict[str, str], dim: int, m: Metric
) -> ClusterPort:
    path = _path(url, parts.netloc, parts.path)
    collection = query.pop("collection", "vecmig")
    _no_more(url, query)
    from .milvus import MilvusCluster

    return MilvusCluster.lite(path, dim, m, collection=collection)


def _remote(
    url: str, parts: SplitResult, query: dict[str, str], dim: int, m: Metric
) -> ClusterPort:
    from vecmig.harness.tokens import TokenError, token_from

    from .remote import RemoteCluster

    timeout = float(query.pop("timeout", "5"))
    token_file = query.pop("token_file", None)
    token_env = query.pop("token_env", CLUSTER_TOKEN_ENV)
    _no_more(url, query)
    try:
        token = token_from(token_file, token_env)
    except TokenError as exc:
        raise ValueError(f"{url!r}: {exc}") from None
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    side = RemoteCluster(base, timeout_s=timeout, token=token)
    if (side.dim, side.metric) != (dim, m):
        raise ValueError(
            f"{url!r} serves {side.dim}-dimensional {side.metric.value} vectors; "
            f"expected {dim}-dimensional {m.value}"
        )
    return side


_OPENERS: dict[str, _Opener] = {
    "fake": _fake,
    "pgvector": _pgvector,
    "qdrant": _qdrant_server,
    "qdrant+local": _qdrant_local,
    "milvus+lite": _milvus_lite,
    "http": _remote,
    "https": _remote,
}


def _open_registered(entry: EntryPoint, url: str, dim: int, metric: Metric) -> ClusterPort:
    where = f"the {entry.name!r} adapter ({entry.value}, entry point group {ADAPTER_GROUP})"
    try:
        opener = entry.load()
    except Exception as exc:  # whatever broke the import, the user must learn which package
        raise ValueError(f"{url!r}: cannot load {where}: {exc!r}") from exc
    if not callable(opener):
        raise ValueError(f"{url!r}: {where} is {opener!r}, not open(url, dim, metric)")
    side = opener(url, dim, metric)
    if not isinstance(side, ClusterPort):
        raise ValueError(f"{url!r}: {where} returned {side!r}, which is no ClusterPort")
    if (side.dim, side.metric) != (dim, metric):
        raise ValueError(
            f"{url!r}: {where} opened a {side.dim}-dimensional {side.metric} side; "
            f"expected {dim}-dimensional {metric.value}"
        )
    return side


def _qdrant(dim: int, metric: Metric, query: dict[str, str], **client_args: object) -> ClusterPort:
    from qdrant_client import QdrantClient

    from .qdrant import QdrantCluster

    collection = query.pop("collection", "vecmig")
    _no_more("qdrant URL", query)
    client_args = {k: v for k, v in client_args.items() if v is not None}
    return QdrantCluster(QdrantClient(**client_args), dim, metric, collection=collection)  # type: ignore[arg-type]


def _query(url: str, raw: str) -> dict[str, str]:
    query = {}
    for key, values in parse_qs(raw, keep_blank_values=True).items():
        if len(values) != 1:
            raise ValueError(f"{url!r} gives {key!r} {len(values)} times; give it once")
        query[key] = values[0]
    return query


def _int(url: str, key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{url!r}: {key} must be an integer, got {value!r}") from None


def _path(url: str, netloc: str, path: str) -> str:
    full = unquote(netloc + path)
    if not full:
        raise ValueError(f"{url!r} names no path; write e.g. scheme:///tmp/side.db (three slashes)")
    return full


def _no_more(url: str, query: dict[str, str]) -> None:
    if query:
        raise ValueError(f"{url!r}: unknown parameter(s) {sorted(query)}")


def _valid() -> str:
    return ", ".join(f"{s}://" for s in schemes())
