"""Testing support: fake clients, container overrides, throwaway PostgreSQL servers.

* :func:`override_with_fakes` puts :class:`FakeMainDB`/:class:`FakeReferenceDB`
  in a container and keeps every pool closed.
* :class:`PostgresServer` starts a real, throwaway PostgreSQL server.
* :class:`PgBouncerServer` puts a real PgBouncer (transaction pooling by
  default) in front of a :class:`PostgresServer`.
* :class:`TcpProxy` sits between a client and a server and cuts the link or
  goes silent on demand, for fault-injection tests.
* :func:`make_certificates` writes a throwaway CA and certificates
  (:class:`TlsFiles`) for a server started with ``PostgresServer(tls=...)``.
* ``wellwon_db.testing.pytest_plugin``, loaded by pytest through its
  ``pytest11`` entry point, gives fixtures: servers, a fresh database per
  test, a started container, fakes.
"""

from wellwon_db.testing._fake_clients import (
    FakeDatabaseClient,
    FakeMainDB,
    FakeReferenceDB,
    FakeTransactionScope,
)
from wellwon_db.testing._fake_replicas import (
    FakeMainReplicaDB,
    FakeReadOnlyClient,
    FakeReferenceReplicaDB,
)
from wellwon_db.testing._fakes import FakeDatabases, override_with_fakes
from wellwon_db.testing._pgbouncer import PgBouncerNotFoundError, PgBouncerServer, find_pgbouncer
from wellwon_db.testing._proxy import TcpProxy
from wellwon_db.testing._scripting import FakeCall, FakeRecord, UnscriptedQueryError
from wellwon_db.testing._server import (
    PostgresNotFoundError,
    PostgresServer,
    find_postgres_bindir,
    run_sync,
)
from wellwon_db.testing._tls import TlsFiles, make_certificates

__all__ = [
    "FakeCall",
    "FakeDatabaseClient",
    "FakeDatabases",
    "FakeMainDB",
    "FakeMainReplicaDB",
    "FakeReadOnlyClient",
    "FakeRecord",
    "FakeReferenceDB",
    "FakeReferenceReplicaDB",
    "FakeTransactionScope",
    "PgBouncerNotFoundError",
    "PgBouncerServer",
    "PostgresNotFoundError",
    "PostgresServer",
    "TcpProxy",
    "TlsFiles",
    "UnscriptedQueryError",
    "find_pgbouncer",
    "find_postgres_bindir",
    "make_certificates",
    "override_with_fakes",
    "run_sync",
]
