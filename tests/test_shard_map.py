"""The shard map and its settings, without a server: placements, validation, variables, code."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.shard_support import ShardedApp
from wellwon_db import (
    ConfigurationError,
    PoolClosedError,
    PostgresConfig,
    ShardMap,
    ShardRoutingError,
    ShardSettings,
    declare_database,
    start_databases,
    stop_databases,
)
from wellwon_db.shards._settings import check_databases, load_shard_settings, shard_variable
from wellwon_db.testing import override_with_fakes


def test_an_even_placement_gives_contiguous_blocks() -> None:
    shard_map = ShardMap(64, "shard_a shard_b shard_c")
    assert [entry.shards for entry in shard_map.placements] == [
        tuple(range(0, 22)),
        tuple(range(22, 43)),
        tuple(range(43, 64)),
    ]
    assert shard_map.placement_text == "shard_a:0-21 shard_b:22-42 shard_c:43-63"
    assert shard_map.database_of(21) == "shard_a"
    assert shard_map.database_of(22) == "shard_b"
    assert shard_map.shards_on("shard_c") == tuple(range(43, 64))


def test_an_explicit_placement_with_ranges_and_numbers() -> None:
    shard_map = ShardMap(16, "shard_a:0-3, 8 ,9,12-15 shard_b:4-7,10-11")
    assert shard_map.shards_on("shard_a") == (0, 1, 2, 3, 8, 9, 12, 13, 14, 15)
    assert shard_map.shards_on("shard_b") == (4, 5, 6, 7, 10, 11)
    assert shard_map.describe()["placement"] == {
        "shard_a": "0-3,8-9,12-15",
        "shard_b": "4-7,10-11",
    }
    # The explicit text describes the same map.
    assert ShardMap(16, shard_map.placement_text) == shard_map


def test_a_placement_from_code() -> None:
    by_mapping = ShardMap(8, {"shard_a": range(0, 4), "shard_b": [4, 5, 6, 7]})
    by_list = ShardMap(8, ["shard_a", "shard_b"])
    assert by_mapping == by_list
    assert by_mapping.databases == ("shard_a", "shard_b")


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ("shard_a:0-8 shard_b:8-15", "places logical shard 8 on both shard_a and shard_b"),
        ("shard_a:0-7 shard_b:9-15", r"no database for logical shard\(s\) 8"),
        ("shard_a:0-7 shard_b:8-16", "logical shard 16 on shard_b, outside 0-15"),
        ("shard_a shard_b:8-15", "mixes databases with ranges and without"),
        ("shard_a:0-7 shard_a:8-15", "names shard_a more than once"),
        ("shard_a:7-0 shard_b:8-15", "runs backwards"),
        ("shard_a:x shard_b:8-15", "not a list of shard numbers"),
        ("Shard-A", "not a valid database name"),
        ("pool_a", "not a valid database name"),
        ("", "is empty"),
    ],
)
def test_a_wrong_placement_says_what_to_fix(placement: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        ShardMap(16, placement)
    assert info.value.env_var == "PG_SHARDS_PLACEMENT"


def test_more_databases_than_shards_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="each database needs at least one"):
        ShardMap(2, "a b c")


@pytest.mark.parametrize(
    ("kwargs", "variable"),
    [
        ({"count": 0}, "PG_SHARDS_COUNT"),
        ({"count": 8193}, "PG_SHARDS_COUNT"),
        ({"count": 8, "scheme": "modulo"}, "PG_SHARDS_SCHEME"),
        ({"count": 8, "key_type": "float"}, "PG_SHARDS_KEY_TYPE"),
        ({"count": 8, "version": 0}, "PG_SHARDS_VERSION"),
    ],
)
def test_a_wrong_map_option_names_its_variable(kwargs: dict[str, object], variable: str) -> None:
    count = kwargs.pop("count")
    with pytest.raises(ConfigurationError) as info:
        ShardMap(count, "a", **kwargs)  # type: ignore[arg-type]
    assert info.value.env_var == variable


def test_an_unknown_shard_number_is_a_routing_error() -> None:
    shard_map = ShardMap(4, "a")
    with pytest.raises(ShardRoutingError, match="no logical shard 4"):
        shard_map.database_of(4)
    with pytest.raises(ShardRoutingError, match="holds no logical shard"):
        shard_map.shards_on("b")


# -- settings --------------------------------------------------------------------------


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_SHARDS_PLACEMENT", "shard_a:0-31 shard_b:32-63")
    monkeypatch.setenv("PG_SHARDS_COUNT", "64")
    monkeypatch.setenv("PG_SHARDS_SCHEME", "citus")
    monkeypatch.setenv("PG_SHARDS_KEY_TYPE", "uuid")
    monkeypatch.setenv("PG_SHARDS_VERSION", "3")
    monkeypatch.setenv("PG_SHARDS_FANOUT_TIMEOUT_SEC", "2.5")
    monkeypatch.setenv("PG_SHARDS_ID_EPOCH", "2020-01-01T00:00:00Z")
    settings = load_shard_settings(None)
    shard_map = settings.shard_map()
    assert (shard_map.count, shard_map.scheme, shard_map.key_type, shard_map.version) == (
        64,
        "citus",
        "uuid",
        3,
    )
    assert settings.fanout_timeout_sec == 2.5
    assert settings.id_epoch == datetime(2020, 1, 1, tzinfo=UTC)
    assert settings.id_epoch_ms == 1577836800000


def test_env_file_code_and_environment_in_that_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PG_SHARDS_PLACEMENT=a b\nPG_SHARDS_COUNT=8\nPG_SHARDS_VERSION=2\n")
    monkeypatch.setenv("PG_SHARDS_VERSION", "5")
    settings = load_shard_settings(env_file, {"fanout_concurrency": 3})
    assert settings.shard_map().databases == ("a", "b")
    assert settings.version == 5  # the environment over .env
    assert settings.fanout_concurrency == 3  # code over both
    from_code = ShardSettings.from_code({"placement": "x y", "count": 4})
    assert from_code.shard_map().databases == ("x", "y")


def test_no_placement_means_no_shard_map() -> None:
    settings = load_shard_settings(None)
    assert not settings.configured
    with pytest.raises(ConfigurationError, match="set PG_SHARDS_PLACEMENT") as info:
        settings.shard_map()
    assert info.value.env_var == "PG_SHARDS_PLACEMENT"


def test_a_placement_without_a_count_asks_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_SHARDS_PLACEMENT", "a b")
    with pytest.raises(ConfigurationError, match="PG_SHARDS_COUNT is not") as info:
        load_shard_settings(None).shard_map()
    assert info.value.env_var == "PG_SHARDS_COUNT"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PG_SHARDS_COUNT", "many", "PG_SHARDS_COUNT"),
        ("PG_SHARDS_SCHEME", "modulo", "PG_SHARDS_SCHEME"),
        ("PG_SHARDS_FANOUT_TIMEOUT_SEC", "0", "PG_SHARDS_FANOUT_TIMEOUT_SEC"),
        ("PG_SHARDS_ID_EPOCH", "2999-01-01", "PG_SHARDS_ID_EPOCH"),
        ("PG_SHARDS_KEY_SETTING", "tenant", "PG_SHARDS_KEY_SETTING"),
    ],
)
def test_a_malformed_variable_is_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=message) as info:
        load_shard_settings(None)
    assert info.value.env_var == variable


def test_a_typo_under_the_prefix_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_SHARDS_CUONT", "64")
    with pytest.raises(ConfigurationError, match="did you mean PG_SHARDS_COUNT") as info:
        load_shard_settings(None)
    assert info.value.env_var == "PG_SHARDS_CUONT"
    # The databases' own check leaves the prefix to the shard settings.
    PostgresConfig.load(env_file=None)


def test_unknown_keys_from_code_are_reported() -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'placement'"):
        ShardSettings.from_code({"placment": "a"})


def test_every_database_must_be_known_and_a_primary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_SHARD_X_DSN", "postgresql://u@localhost/x")
    config = PostgresConfig.load(env_file=None)
    check_databases(ShardMap(4, "shard_x"), config)
    with pytest.raises(ConfigurationError, match="set POSTGRES_SHARD_Y_DSN") as info:
        check_databases(ShardMap(4, "shard_x shard_y"), config)
    assert info.value.env_var == "POSTGRES_SHARD_Y_DSN"
    # (Declarations are process-wide: names unlike the other tests' databases.)
    declare_database("archive")
    declare_database("archive_standby", replica_of="archive")
    config = PostgresConfig.load(env_file=None)
    with pytest.raises(ConfigurationError, match="a replica of archive"):
        check_databases(ShardMap(4, "archive_standby"), config)


EXAMPLE = Path(__file__).resolve().parent.parent / ".env.example"


def test_env_example_lists_every_shard_setting_at_its_default() -> None:
    listed = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", EXAMPLE.read_text(), flags=re.M))
    for field in ShardSettings.model_fields:
        assert shard_variable(field) in listed, field
    assert load_shard_settings(EXAMPLE) == load_shard_settings(None)
    assert not load_shard_settings(EXAMPLE).configured


async def test_fakes_keep_the_shards_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PG_SHARDS_PLACEMENT", "shard_a")
    monkeypatch.setenv("PG_SHARDS_COUNT", "4")
    monkeypatch.setenv("POSTGRES_SHARD_A_DSN", "postgresql://u@127.0.0.1:9/nowhere")
    container = ShardedApp()
    with override_with_fakes(container):
        await start_databases(container)  # nothing opens, nothing fails
        with pytest.raises(PoolClosedError):
            container.sharded().for_key(1)
        await stop_databases(container)
