"""A FastAPI service on wellwon_db: two databases, one container, several workers.

Run it with ``uvicorn examples.fastapi_app.app:app --workers 4`` (see this
directory's README.md). Each worker process builds its own container and
opens its own pools in the lifespan; every pool's size comes from the
environment (``PG_POOL_MAX_SIZE``, ``PG_REFERENCE_POOL_MAX_SIZE``), so the
connections a deployment opens are workers x max size per database.

Endpoints:

* ``GET /users/{id}`` -- a user, from the main database;
* ``POST /users`` -- checks the country in the reference database, then
  creates the user and its first event in one main-database transaction;
* ``GET /customs/{country}`` -- a customs code, from the reference database;
* ``GET /healthz`` -- liveness: the process answers, no database involved;
* ``GET /readyz`` -- readiness: :func:`wellwon_db.check_health`, 503 when down.

A database that cannot be reached answers 503 with ``Retry-After``; the
other database's endpoints keep working.
"""

# No ``from __future__ import annotations``: dependency-injector finds the
# ``Annotated[..., Depends(Provide[...])]`` markers only in evaluated annotations.

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from dependency_injector import containers, providers
from dependency_injector.wiring import Provide, inject
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from wellwon_db import (
    DatabaseClient,
    DatabaseContainer,
    DatabaseUnavailableError,
    MainDB,
    PoolClosedError,
    PoolTimeoutError,
    ReferenceDB,
    TransactionScope,
    check_health,
    database_lifespan,
)

# Any application-wide constant: the key of the advisory lock that serialises
# schema creation when several workers start at once.
SCHEMA_LOCK = 0x77656C6C

MAIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL,
    country text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS user_events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL REFERENCES users (id),
    event text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
"""

# Demo rows: a real reference database is loaded by its own process.
REFERENCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS dc_customs (
    country text PRIMARY KEY,
    customs_code text NOT NULL
);
INSERT INTO dc_customs (country, customs_code) VALUES
    ('DE', 'DE-ZOLL'), ('FR', 'FR-DGDDI'), ('GB', 'GB-HMRC'), ('US', 'US-CBP')
ON CONFLICT (country) DO NOTHING;
"""


class AppContainer(containers.DeclarativeContainer):
    """The application's container: wellwon_db's, embedded, and the wiring of this module."""

    wiring_config = containers.WiringConfiguration(modules=[__name__])

    db = providers.Container(DatabaseContainer)


# The clients as FastAPI dependencies, provided by the container.
Main = Annotated[MainDB, Depends(Provide[AppContainer.db.main_db])]
Reference = Annotated[ReferenceDB, Depends(Provide[AppContainer.db.reference_db])]


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    country: str = Field(min_length=2, max_length=2, description="ISO 3166-1 alpha-2")


class User(BaseModel):
    id: int
    name: str
    country: str
    created_at: datetime


class CreatedUser(BaseModel):
    id: int
    name: str
    country: str
    customs_code: str


class Customs(BaseModel):
    country: str
    customs_code: str


async def ensure_schema(client: DatabaseClient, ddl: str) -> None:
    """Run ``ddl`` (idempotent) under a transaction-scoped advisory lock.

    Concurrent ``CREATE TABLE IF NOT EXISTS`` can still fail with a unique
    violation on the catalogue; with the lock, the first worker creates and
    the others wait, then find everything there.
    """
    async with client.transaction() as tx:
        await tx.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
        await tx.execute(ddl)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open this worker's pools, make sure the tables exist; close the pools at shutdown."""
    container: AppContainer = app.state.container
    async with database_lifespan(container.db):
        await ensure_schema(container.db.main_db(), MAIN_SCHEMA)
        await ensure_schema(container.db.reference_db(), REFERENCE_SCHEMA)
        yield


router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: answers as long as the process does; touches no database."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: every database probed; 503 when a required one is down."""
    container: AppContainer = request.app.state.container
    report = await check_health(container.db)
    code = status.HTTP_503_SERVICE_UNAVAILABLE if report.status == "down" else status.HTTP_200_OK
    return JSONResponse(report.to_dict(), status_code=code)


@router.get("/users/{user_id}")
@inject
async def get_user(user_id: int, main: Main) -> User:
    row = await main.fetchrow(
        "SELECT id, name, country, created_at FROM users WHERE id = $1", user_id, idempotent=True
    )
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user {user_id}")
    return User(**dict(row))


@router.post("/users", status_code=status.HTTP_201_CREATED)
@inject
async def create_user(new: NewUser, main: Main, reference: Reference) -> CreatedUser:
    country = new.country.upper()
    customs_code = await reference.fetchval(
        "SELECT customs_code FROM dc_customs WHERE country = $1", country, idempotent=True
    )
    if customs_code is None:
        raise HTTPException(422, f"unknown country {country}")

    async def insert(tx: TransactionScope) -> int:
        user_id: int = await tx.fetchval(
            "INSERT INTO users (name, country) VALUES ($1, $2) RETURNING id", new.name, country
        )
        await tx.execute(
            "INSERT INTO user_events (user_id, event) VALUES ($1, 'created')", user_id
        )
        return user_id

    # Both rows or neither; re-run from the start after a serialization failure.
    user_id = await main.run_in_transaction(insert)
    return CreatedUser(id=user_id, name=new.name, country=country, customs_code=customs_code)


@router.get("/customs/{country}")
@inject
async def get_customs(country: str, reference: Reference) -> Customs:
    row = await reference.fetchrow(
        "SELECT country, customs_code FROM dc_customs WHERE country = $1",
        country.upper(),
        idempotent=True,
    )
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no customs code for {country}")
    return Customs(**dict(row))


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 naming the database, never its address: the client should retry later."""
    database = getattr(exc, "database", "a")
    return JSONResponse(
        {"detail": f"the {database} database is unavailable"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


def create_app() -> FastAPI:
    """A new application with its own container (wired to this module)."""
    app = FastAPI(title="wellwon_db example", lifespan=lifespan)
    app.state.container = AppContainer()
    app.include_router(router)
    for error in (DatabaseUnavailableError, PoolTimeoutError, PoolClosedError):
        app.add_exception_handler(error, database_unavailable)
    return app


app = create_app()
