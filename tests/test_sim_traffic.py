"""The simulator's traffic (sim/traffic.py): merchants delist products and list them again, so
that a delete followed by a re-insert of the same id, the classic trap for tombstones, runs
through every phase of a migration; the safe strategy stays valid through it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import simpy

from vecmig.harness.catalog import Catalog
from vecmig.harness.clusters.base import Record
from vecmig.harness.history.ops import Event
from vecmig.sim.scenario import MERCHANT_ACTIONS, TrafficConfig, from_dict
from vecmig.sim.simulation import Simulation
from vecmig.sim.traffic import SESSION_KINDS, Traffic


class _Asked:
    """Stands in for an instance's migration layer: returns the write a merchant asked for."""

    def upsert(self, record: Record) -> tuple[str, Record]:
        return ("upsert", record)

    def delete(self, record_id: str, version: int) -> tuple[str, str, int]:
        return ("delete", record_id, version)


def _traffic(seed: int = 0) -> tuple[Traffic, Any]:
    catalog = Catalog.generate(60, 8, categories=3, seed=seed)
    traffic = Traffic(
        simpy.Environment(),
        None,  # type: ignore[arg-type]  # write() needs no fleet
        catalog,
        TrafficConfig(),
        duration_ns=1,
        rng=np.random.default_rng(seed),
        content_rng=np.random.default_rng(seed + 1),
    )
    return traffic, SimpleNamespace(layer=_Asked())


def test_relist_is_a_merchant_action_a_scenario_can_weigh() -> None:
    assert "relist" in MERCHANT_ACTIONS and ("shopper", *MERCHANT_ACTIONS) == SESSION_KINDS


def test_relist_lists_each_delisted_product_again_with_the_version_after_its_delete() -> None:
    traffic, instance = _traffic()
    assert traffic.write(instance, "relist") is None, "nothing is delisted yet"
    deletes = [traffic.write(instance, "delist") for _ in range(6)]
    tombstones = {record_id: version for _, record_id, version in deletes}  # type: ignore[misc]
    assert len(tombstones) == 6, "a delisted product is not delisted again"
    relisted: dict[str, Record] = {}
    for _ in range(6):
        f, record = traffic.write(instance, "relist")  # type: ignore[misc]
        assert f == "upsert" and record.id not in relisted
        relisted[record.id] = record
    assert relisted.keys() == tombstones.keys()
    for record_id, record in relisted.items():
        assert record.version == tombstones[record_id] + 1
        assert record.metadata["in_stock"] is True
        assert traffic.products[record_id].listed
    assert traffic.write(instance, "relist") is None, "every delisted product is listed again"
    f, record = traffic.write(instance, "price")  # type: ignore[misc]
    assert record.version == traffic.versions[record.id]


def _re_inserts(events: list[Event]) -> list[tuple[str, str | None]]:
    """(id, phase) of every upsert invoked after a delete of its id was acknowledged."""
    deleted: set[str] = set()
    phase: str | None = None
    found: list[tuple[str, str | None]] = []
    for event in events:
        if event.f == "phase":
            phase = event.value["phase"]
        elif event.f == "delete" and event.type == "ok":
            deleted.add(event.value["id"])
        elif event.f == "upsert" and event.type == "invoke" and event.value["id"] in deleted:
            found.append((event.value["id"], phase))
    return found


def test_a_migration_with_delists_and_relists_in_every_phase_stays_valid() -> None:
    """Products are delisted and listed again while the backfill copies them (a tombstone
    must not block the re-insert, nor the copy bring the old version back) and after the
    cutover; the safe strategy is valid, and every filtered hit is judged."""
    scenario = from_dict(
        {
            "duration_s": 30,
            "catalog": {"products": 200, "dim": 8, "categories": 2},
            "traffic": {
                "rate": 120,
                "shopper_share": 0.5,
                "filtered_share": 0.5,
                "merchant": {"price": 0.2, "stock": 0.2, "delist": 0.3, "relist": 0.3},
            },
            "instances": {"count": 2},
            "migration": {
                "start_s": 1,
                "hold_s": {"DUAL_WRITE": 2, "SHADOW": 3, "CUTOVER": 2},
                "min_mirrored_reads": 10,
                "soak_s": 2,
                "batch_size": 8,
                "backfill_rate": 40,
                "calibration_queries": 5,
            },
        }
    )
    result = Simulation(scenario, "safe", seed=3).run()
    phases = {phase for _, phase in _re_inserts(result.events)}
    assert {"DUAL_WRITE", "BACKFILL", "SHADOW", "CUTOVER"} <= phases, phases
    assert len(_re_inserts(result.events)) >= 50
    verdict = result.verdict
    assert verdict.valid, verdict.to_json()
    assert verdict.unjudged_filtered_hits == 0
    assert any(e.f == "search" and e.value.get("filter") for e in result.events)
