"""The registry's bookkeeping: aliases always resolve to one id, sharing follows instance keys."""

import pytest

from jupyter_llm_manager import ConfigurationError, ModelNotFoundError, ModelSpec
from jupyter_llm_manager.config.registry import Registry


def spec(model_id, source="org/x", **fields):
    return ModelSpec.from_mapping(model_id, {"source": source, **fields})


@pytest.fixture
def registry():
    registry = Registry()
    registry.put(spec("a", "org/shared", priority=1, keep_alive="10m"))
    registry.put(spec("b", "org/shared", keep_alive="5m", pinned=True))
    registry.put(spec("c", "org/other"))
    registry.set_alias("x", "a", overwrite=False)
    registry.set_alias("y", "x", overwrite=False)
    return registry


def test_aliases_resolve_through_chains_and_refusals_change_nothing(registry):
    assert registry.resolve("y") == "a" and registry.aliases_of("a") == ("x", "y")
    before = dict(registry.aliases)
    with pytest.raises(ConfigurationError, match="alias cycle: x → y → x"):
        registry.set_alias("x", "y", overwrite=True)
    with pytest.raises(ModelNotFoundError):
        registry.set_alias("z", "nope", overwrite=False)
    with pytest.raises(ConfigurationError, match="registered model"):
        registry.set_alias("c", "a", overwrite=True)
    assert registry.aliases == before


def test_forgetting_an_alias_keeps_the_aliases_of_it_naming_what_it_named(registry):
    assert registry.remove("x") is None
    assert registry.aliases == {"y": "a"} and registry.resolve("y") == "a" and registry.aliases_of("a") == ("y",)


def test_ids_sharing_a_key_act_together(registry):
    key = registry.keys["a"]
    assert registry.ids_of(key) == ["a", "b"] and registry.keys["b"] == key
    assert registry.is_pinned(key) and registry.priority(key) == 1 and registry.keep_alive(key) == 300
    assert not registry.is_pinned(registry.keys["c"]) and registry.keep_alive(registry.keys["c"]) is None


def test_removing_returns_the_key_no_one_uses_any_more(registry):
    assert registry.remove("y") is None and "y" in registry.removed
    assert registry.remove("a") is None  # 'b' still uses the shared weights
    assert "x" not in registry.aliases  # the alias of a removed model goes with it
    assert registry.remove("b") == spec("b", "org/shared").instance_key
    assert registry.names() == ["c"]


def test_replacing_a_spec_reports_the_key_left_behind(registry):
    assert registry.key_left_behind("c", spec("c", "org/other")) is None  # same key
    assert registry.key_left_behind("c", spec("c", "org/new")) == registry.keys["c"]
    assert registry.key_left_behind("a", spec("a", "org/new")) is None  # 'b' still uses it


def test_close_matches_prefer_the_same_name_in_another_case(registry):
    assert registry.close_matches("C") == ["c"]
    with pytest.raises(ModelNotFoundError) as caught:
        registry.resolve("yy")
    assert caught.value.close_matches == ("y",)


def test_status_looks_at_each_name_a_bounded_number_of_times(make_manager, monkeypatch):
    """Bookkeeping stays linear: 2,000 ids with aliases, and no row scans every other id."""
    from jlm_helpers.fakes import fake

    from jupyter_llm_manager.config.registry import Registry

    manager = make_manager()
    for index in range(2000):
        fake(manager, f"m{index}")
        manager.alias(f"alias{index}", f"m{index}")
    looks = [0]
    resolve, ids_of = Registry.resolve, Registry.ids_of

    def counted_resolve(self, name):
        looks[0] += 1
        return resolve(self, name)

    def counted_ids_of(self, key):
        found = ids_of(self, key)
        looks[0] += len(found)
        return found

    monkeypatch.setattr(Registry, "resolve", counted_resolve)
    monkeypatch.setattr(Registry, "ids_of", counted_ids_of)
    manager.status()  # the first look builds the alias index once
    first, looks[0] = looks[0], 0
    rows = manager.status()
    assert len(rows) == 2000 and all(row.aliases == (f"alias{row.id[1:]}",) for row in rows)
    assert first <= 20 * 4000 and looks[0] <= 20 * 2000
