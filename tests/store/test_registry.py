"""Stores by URL scheme: the built-in ones, refusals that list what exists, and a scheme registered later."""

from __future__ import annotations

import pytest

from trioschedule import MemoryStore, SQLiteStore, Store
from trioschedule._store import registry
from trioschedule._store.registry import open_store, register_scheme, schemes


def test_open_store_makes_an_sqlite_store(tmp_path):
    store = open_store(f"sqlite:{tmp_path / 'j.sqlite'}")
    assert isinstance(store, SQLiteStore) and store.url == f"sqlite:{tmp_path / 'j.sqlite'}"


@pytest.mark.parametrize("spec", [None, "memory", "memory:"])
def test_memory_is_the_default(spec):
    store = open_store(spec)
    assert type(store) is MemoryStore and not store.durable and store.url == "memory:"


def test_a_store_instance_passes_through():
    store = MemoryStore()
    assert open_store(store) is store


@pytest.mark.parametrize("spec", ["postgres://db", "mysql:x", "sqlite", "", "memory:x", "SQLITE:j.sqlite"])
def test_an_unknown_store_is_refused_with_the_schemes_that_exist(spec):
    with pytest.raises(ValueError, match="store") as info:
        open_store(spec)
    assert repr(spec) in str(info.value)
    if spec != "memory:x":
        assert "'memory:'" in str(info.value) and "'sqlite:PATH'" in str(info.value)


def test_the_sqlite_path_must_be_a_file():
    with pytest.raises(ValueError, match="file path"):
        open_store("sqlite:")


class NetworkStore(Store):
    durable = True

    def __init__(self, address: str) -> None:
        self.address = address
        self.url = "test-net:" + address


def test_a_registered_scheme_is_opened_and_listed(monkeypatch):
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))  # leave the real table as it was
    register_scheme("test-net", NetworkStore, usage="test-net://HOST:PORT/DB")
    store = open_store("test-net://db.example:5432/tasks")
    assert isinstance(store, NetworkStore) and store.address == "//db.example:5432/tasks"
    assert schemes() == {"memory": "memory:", "sqlite": "sqlite:PATH", "postgresql": "postgresql://USER@HOST:PORT/DB",
                         "test-net": "test-net://HOST:PORT/DB"}  # fmt: skip
    with pytest.raises(ValueError, match="'test-net://HOST:PORT/DB'"):
        open_store("nope:")


def test_registering_a_scheme_again_replaces_it(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "_SCHEMES", dict(registry._SCHEMES))
    register_scheme("sqlite", lambda path: NetworkStore(path))
    assert isinstance(open_store(f"sqlite:{tmp_path / 'j'}"), NetworkStore)
    assert schemes()["sqlite"] == "sqlite:..."


@pytest.mark.parametrize("scheme", ["", "a:b", "SQLite"])
def test_a_scheme_is_a_lower_case_name(scheme):
    with pytest.raises(ValueError, match="scheme"):
        register_scheme(scheme, NetworkStore)
