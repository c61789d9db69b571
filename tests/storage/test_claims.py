"""Claims over the real MinIO: delivered events claimed before handling, failed runs reopened,
folders that are not versions ignored. Each conditional write is MinIO's own If-None-Match /
If-Match, raced by threads."""

from __future__ import annotations

import threading
import time

import pytest

from kafkaml.errors import Conflict
from storage.registry import EVENT_DONE, EVENT_PENDING, EVENT_RELEASED, Registry

pytestmark = pytest.mark.integration


@pytest.fixture
def registry(stack) -> Registry:
    reg = Registry.from_settings(stack)
    reg.ensure_ready()
    return reg


def test_eight_concurrent_claims_of_one_event_give_it_to_exactly_one(registry, unique):
    barrier, results = threading.Barrier(8), []

    def claim() -> None:
        barrier.wait()
        results.append(registry.claim_event("/s", f"e-{unique}", "t", hold_s=60))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    owners = [record for record, etag in results if etag is not None]
    print(f"\n8 concurrent claims: {len(owners)} owner, {len(results) - len(owners)} told to wait")
    assert len(results) == 8 and len(owners) == 1
    assert {r["state"] for r, _ in results} == {EVENT_PENDING}


def test_a_claim_is_answered_released_or_taken_over_once_it_lapses(registry, unique):
    source, event_id = "/s", f"e-{unique}"
    record, etag = registry.claim_event(source, event_id, "t", hold_s=60)
    assert etag is not None
    assert registry.claim_event(source, event_id, "t", hold_s=60)[1] is None  # held
    registry.release_event(source, event_id, etag, "Unavailable: storage down")
    assert registry.find_event(source, event_id)["state"] == EVENT_RELEASED
    again, etag = registry.claim_event(source, event_id, "t", hold_s=0.5)
    assert etag is not None and again["takeovers"] == 1  # a released claim: handle it again
    time.sleep(0.6)  # its handler "died": the claim lapses
    late, late_etag = registry.claim_event(source, event_id, "t", hold_s=60)
    assert late_etag is not None and late["takeovers"] == 2
    assert registry.finish_event(source, event_id, etag, {"id": "x"}) is False  # lost it
    assert registry.finish_event(source, event_id, late_etag, {"id": "y"}) is True
    done, none = registry.claim_event(source, event_id, "t", hold_s=60)
    assert none is None and done["state"] == EVENT_DONE and done["answer"] == {"id": "y"}


def test_a_failed_run_is_reopened_once_with_its_reason_kept(registry, unique):
    run_id = f"run-{unique}"
    registry.claim_run(run_id, {"deployment_id": "d"})
    _, etag = registry.get_run(run_id)
    registry.update_run(
        run_id, etag, status="failed", permanent=True, reason="no deployment", error_status=422
    )
    reopened = registry.reopen_run(run_id, "tests")
    assert reopened["permanent"] is False and reopened["status"] == "failed"
    assert reopened["retries"][0]["reason"] == "no deployment"
    _, etag = registry.get_run(run_id)
    registry.update_run(run_id, etag, status="claimed")  # the redelivery may take it now
    with pytest.raises(Conflict, match="only a failed run can be retried"):
        registry.reopen_run(run_id, "tests")


def test_a_model_folder_that_is_not_ascii_digits_is_not_a_version(registry, unique):
    name = f"m-{unique}"
    registry.register_model(name, {"format": "keras_json", "keras_json": "{}"})
    registry.store.put(f"models/{name}/²/model.json", b"{}")
    assert registry.list_model_versions(name) == [1]
    assert {m["name"]: m["versions"] for m in registry.list_models()}[name] == [1]
