"""Registry: versions, aliases with history, promotion gates, rollback, crash-safe publish, reconcile, patches."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from recsys.serving import bundle as B
from recsys.serving import store as S
from recsys.serving import registry as R
from test_bundle import INDEX_CLASS, make_parts

TESTS = Path(__file__).resolve().parent


def metrics(warm: float, cold: float | None) -> dict:
    out = {"warm": {"recall": {"20": warm}}}
    if cold is not None:
        out["cold"] = {"recall": {"20": cold}}
    return out


def publish(engine, root, version, warm=0.3, cold=0.1, alias="candidate", **kwargs):
    parts = make_parts(n_items=40, n_cold=4, metrics=metrics(warm, cold), **kwargs)
    return R.publish(engine, root, parts, version, alias=alias)


V1, V2, V3 = "20260101T000000Z-00000001", "20260102T000000Z-00000002", "20260103T000000Z-00000003"


def test_migration_creates_the_registry_tables(engine):
    with engine.connect() as conn:
        tables = {r[0] for r in conn.execute(sa.text(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"))}
        applied = [r[0] for r in conn.execute(sa.text("SELECT name FROM schema_migrations ORDER BY version"))]
    assert {"model_versions", "aliases", "alias_history"} <= tables
    assert "003_registry.sql" in applied


def test_publish_registers_and_moves_the_alias(engine, tmp_path):
    assert R.get_alias(engine, "production") is None and R.list_versions(engine) == []
    assert publish(engine, tmp_path, V1) == V1
    info = R.get_version(engine, V1)
    assert info.status == "published" and info.kind == "full" and info.aliases == ("candidate",)
    assert Path(info.path) == tmp_path / V1 and info.recall_at("warm") == 0.3
    assert info.manifest_sha256 == B.open_bundle(info.path, index_class=INDEX_CLASS).manifest_sha256
    # registering the same folder again is a no-op; another manifest under the same name is refused
    assert R.register_version(engine, tmp_path / V1).manifest_sha256 == info.manifest_sha256
    with pytest.raises(S.BundleExistsError):
        publish(engine, tmp_path, V1)
    with pytest.raises(ValueError, match="alias must be one of"):
        R.get_alias(engine, "staging")


def test_versions_are_found_by_their_notes(engine, tmp_path):
    parts = make_parts(n_items=40, n_cold=4)
    parts.notes["fingerprint"] = "abc123"
    R.publish(engine, tmp_path, parts, V1)
    publish(engine, tmp_path, V2)
    assert [v.version for v in R.versions_with_note(engine, "fingerprint", "abc123")] == [V1]
    assert R.get_version(engine, V1).notes["fingerprint"] == "abc123"
    R.set_status(engine, V1, "missing")
    assert R.versions_with_note(engine, "fingerprint", "abc123") == []


def test_move_alias_records_history_in_one_transaction(engine, tmp_path):
    publish(engine, tmp_path, V1, alias=None)
    publish(engine, tmp_path, V2, alias=None)
    assert R.move_alias(engine, "production", V1, "first") is None
    assert R.move_alias(engine, "production", V2, "second") == V1
    history = R.alias_history(engine, "production")
    assert [(h["from_version"], h["to_version"], h["reason"]) for h in history] == [(None, V1, "first"),
                                                                                    (V1, V2, "second")]
    with pytest.raises(R.UnknownVersionError, match="not in the registry"):
        R.move_alias(engine, "production", "20990101T000000Z-deadbeef")
    with pytest.raises(R.AliasMovedError):
        R.move_alias(engine, "production", V1, expected=V1)
    assert R.get_alias(engine, "production").version == V2
    assert len(R.alias_history(engine, "production")) == 2  # failed moves left no trace


def test_promote_gates_pass_and_fail(engine, tmp_path):
    publish(engine, tmp_path, V1, warm=0.30, cold=0.10)
    publish(engine, tmp_path, V2, warm=0.25, cold=0.12)  # warm 17% worse than V1
    publish(engine, tmp_path, V3, warm=0.31, cold=None)
    gates = R.Gates(min_warm_recall_at_20=0.2, min_cold_recall_at_20=0.05, max_relative_drop=0.05)
    R.promote(engine, V1, gates)
    assert R.get_alias(engine, "production").version == V1
    with pytest.raises(R.GateFailedError) as err:
        R.promote(engine, V2, gates)
    assert err.value.failures == ["warm Recall@20 0.2500 is more than 5% below production's 0.3000"]
    assert "--force" in str(err.value)
    assert R.get_version(engine, V2).status == "rejected"
    with pytest.raises(R.GateFailedError, match="cold Recall@20 is not in the version's metrics"):
        R.promote(engine, V3, gates)
    strict = R.Gates(min_warm_recall_at_20=0.5, min_cold_recall_at_20=0.5)
    with pytest.raises(R.GateFailedError) as err:
        R.promote(engine, V2, strict)
    assert len(err.value.failures) == 3  # warm floor, warm drop, cold floor
    assert R.get_alias(engine, "production").version == V1
    R.promote(engine, V2, gates, force=True)
    info = R.get_version(engine, V2)
    assert info.aliases == ("production",) and info.status == "published"


def test_check_gates_without_production():
    assert R.check_gates(metrics(0.2, 0.1), None, R.Gates(0.1, 0.1)) == []
    assert R.check_gates({}, None, R.Gates()) == []
    assert R.check_gates(metrics(0.2, None), metrics(0.3, 0.2), R.Gates(max_relative_drop=0.5)) == []
    with pytest.raises(ValueError, match="max_relative_drop"):
        R.Gates(max_relative_drop=2)


def test_rollback_walks_back_the_production_history(engine, tmp_path):
    for v in (V1, V2, V3):
        publish(engine, tmp_path, v)
    with pytest.raises(R.RegistryError, match="No earlier production version"):
        R.rollback(engine)
    for v in (V1, V2, V3):
        R.promote(engine, v, force=True)
    assert R.rollback(engine) == V2
    assert R.rollback(engine) == V1
    with pytest.raises(R.RegistryError, match="current: " + V1):
        R.rollback(engine)
    R.promote(engine, V3, force=True)
    assert R.rollback(engine) == V1
    actions = [h["action"] for h in R.alias_history(engine)]
    assert actions == ["promote", "promote", "promote", "rollback", "rollback", "promote", "rollback"]


def test_reconcile_registers_orphans_removes_staging_and_marks_missing(engine, tmp_path):
    publish(engine, tmp_path, V1)
    orphan = B.write_bundle(tmp_path, V2, make_parts(n_items=40, n_cold=4))  # crashed before registering
    staging = tmp_path / f"{S.TEMP_PREFIX}{V3}-abcd"
    (staging / "items").mkdir(parents=True)
    (staging / "items" / "price.npy").write_bytes(b"half")
    damaged = B.write_bundle(tmp_path, V3, make_parts(n_items=40, n_cold=4))
    (damaged / "manifest.json").write_text("{")
    report = R.reconcile(engine, tmp_path, stale_after_s=3600)
    assert report.removed_staging == [] and staging.exists()  # young staging folders may be a running publish
    assert report.registered_orphans == [V2] and list(report.damaged) == [V3]
    assert R.get_version(engine, V2).status == "orphan"
    report = R.reconcile(engine, tmp_path, stale_after_s=0)
    assert report.removed_staging == [staging.name] and not staging.exists()
    (damaged / "manifest.json").unlink()
    moved = tmp_path.parent / "elsewhere"
    (tmp_path / V1).rename(moved)
    report = R.reconcile(engine, tmp_path, stale_after_s=0)
    assert report.marked_missing == [V1] and R.get_version(engine, V1).status == "missing"
    with pytest.raises(R.RegistryError, match="missing"):
        R.move_alias(engine, "production", V1)
    moved.rename(tmp_path / V1)
    report = R.reconcile(engine, tmp_path, stale_after_s=0)
    assert report.restored == [V1] and R.get_version(engine, V1).status == "published"
    R.promote(engine, V2, force=True)  # an orphan is complete: it can be served
    assert R.get_version(engine, V2).status == "published"


# A fork server: imports once, then forks one publisher per request, which SIGKILLs itself
# after its N-th durable step (N = 0: runs to the end and prints its steps).
FORK_SERVER = textwrap.dedent("""
    import os, signal, sys, traceback
    sys.path.insert(0, {tests!r})
    from test_bundle import INDEX_CLASS
    from recsys.serving import bundle as B, registry as R
    from recsys.ingest.db import get_engine

    parts = B.open_bundle({source!r}, index_class=INDEX_CLASS).parts
    parts.metrics = {{"warm": {{"recall": {{"20": 0.5}}}}}}
    for line in sys.stdin:
        kill_at, version = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                steps = []

                def on_step(name):
                    steps.append(name)
                    if len(steps) == int(kill_at):
                        os.kill(os.getpid(), signal.SIGKILL)

                R.publish(get_engine(url={url!r}), {root!r}, parts, version, alias="production", on_step=on_step)
                print("steps " + "|".join(steps), flush=True)
                os._exit(0)
            except BaseException:
                traceback.print_exc()
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        print(f"exit {{-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}}", flush=True)
""")


def test_a_publish_killed_at_any_step_leaves_old_or_new_state(engine, pg_url, tmp_path):
    from recsys.serving.client import Client

    root = tmp_path / "artifacts"
    publish(engine, root, V1, alias="production")
    script = FORK_SERVER.format(tests=str(TESTS), url=pg_url, source=str(root / V1), root=str(root))
    server = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, bufsize=1)
    try:
        def run(kill_at: int, version: str) -> tuple[int, list[str]]:
            server.stdin.write(f"{kill_at} {version}\n")
            server.stdin.flush()
            steps = []
            while (line := server.stdout.readline()).startswith("steps "):
                steps = line.split(" ", 1)[1].strip().split("|")
            assert line.startswith("exit "), f"fork server died: {line!r}"
            return int(line.split()[1]), steps

        code, steps = run(0, "20260201T000000Z-00000000")  # no kill: learn the steps
        assert code == 0 and steps[-4:] == ["staged", "renamed", "registered", "alias moved"], steps
        R.move_alias(engine, "production", V1)
        for kill_at in range(1, len(steps) + 1):
            version = f"20260201T0000{kill_at:02d}Z-000000{kill_at:02d}"
            code, _ = run(kill_at, version)
            assert code == -signal.SIGKILL, (kill_at, steps[kill_at - 1])
            # the old state, or the complete new version; never a half-written folder under a version name
            for folder in root.iterdir():
                if not folder.name.startswith("."):
                    B.open_bundle(folder, index_class=INDEX_CLASS)
            production = R.get_alias(engine, "production").version
            assert production in (V1, version)
            if (root / version).exists():
                assert B.open_bundle(root / version, index_class=INDEX_CLASS).version == version
            else:
                assert production == V1
            assert (production == version) == (kill_at == len(steps))
            with Client.from_registry(engine=engine, refresh_interval_s=None, index_class=INDEX_CLASS) as client:
                assert client.version == production and len(client.similar("item-0010", k=5)) == 5
            # after reconcile the registry agrees with the folders
            R.reconcile(engine, root, stale_after_s=0)
            folders = {p.name for p in root.iterdir()}
            assert not any(name.startswith(".") for name in folders)
            rows = {v.version: v for v in R.list_versions(engine)}
            assert folders == {name for name, info in rows.items() if info.status != "missing"}
            if production != V1:
                R.move_alias(engine, "production", V1)
    finally:
        server.stdin.close()
        server.wait(timeout=30)


def test_publish_patch_makes_new_catalogue_items_servable(engine, tmp_path):
    from recsys.serving.client import Client

    nothing_yet = pd.DataFrame({"item_id": ["x"], "category": ["fruit"]})
    assert R.publish_patch(engine, tmp_path, nothing_yet, index_class=INDEX_CLASS) is None
    publish(engine, tmp_path, V1, alias="production")
    new = pd.DataFrame({"item_id": ["new-1"], "category": ["fruit"], "brand": ["acme"], "price": [20.0]})
    patch = R.publish_patch(engine, tmp_path, new, index_class=INDEX_CLASS)
    assert patch == V1 + ".p1"
    info = R.get_version(engine, patch)
    assert info.kind == "patch" and info.parent_version == V1 and info.aliases == ("production",)
    assert info.metrics == R.get_version(engine, V1).metrics  # same model, same numbers
    assert R.publish_patch(engine, tmp_path, new, index_class=INDEX_CLASS) is None  # nothing new any more
    newer = pd.DataFrame({"item_id": ["new-2"], "category": ["dairy"]})
    assert R.publish_patch(engine, tmp_path, newer, index_class=INDEX_CLASS) == V1 + ".p2"
    assert B.open_bundle(tmp_path / (V1 + ".p2"), index_class=INDEX_CLASS).manifest["parent_version"] == patch
    client = Client.from_registry(engine=engine, refresh_interval_s=None, index_class=INDEX_CLASS)
    assert "new-1" in client and "new-2" in client
    assert R.rollback(engine) == patch


def test_publish_patch_reads_new_items_from_the_catalogue(engine, tmp_path):
    parts = make_parts(n_items=40, n_cold=4)
    parts.watermark = {"max_item_updated_at": 1_700_000_000}
    R.publish(engine, tmp_path, parts, V1, alias="production")
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO items (item_id, category, brand, price, updated_at) VALUES "
            "('item-0001', 'fruit', NULL, 3, to_timestamp(1600000000)), "  # old and known
            "('brand-new', 'bread', 'bolt', 12.5, now())"))
    patch = R.publish_patch(engine, tmp_path, index_class=INDEX_CLASS)
    items = B.open_bundle(tmp_path / patch, index_class=INDEX_CLASS).parts.items
    assert items.item_ids[-1] == "brand-new" and len(items) == 41


def test_cli_versions_promote_rollback(engine, cli, tmp_path):
    from recsys.app.cli import main
    from recsys.app.cli_serving import register

    if "versions" not in main.commands:
        register(main)
    code, out = cli("versions")
    assert code == 0 and "No versions yet" in out and "recsys train" in out
    publish(engine, tmp_path, V1, warm=0.3, cold=0.1)
    publish(engine, tmp_path, V2, warm=0.1, cold=0.1)
    code, out = cli("promote", V1)
    assert code == 0 and f"(none) -> {V1}" in out
    code, out = cli("promote", V2)
    assert code == 2 and "failed checks" in out and "--force" in out
    code, out = cli("promote", V2, "--force")
    assert code == 0 and f"{V1} -> {V2}" in out
    code, out = cli("versions")
    assert code == 0 and V1 in out and "0.3000" in out and "production" in out
    code, out = cli("versions", "--json")
    assert {v["version"]: v["aliases"] for v in json.loads(out)} == {V1: [], V2: ["candidate", "production"]}
    code, out = cli("rollback")
    assert code == 0 and f"{V2} -> {V1}" in out
    code, out = cli("promote", "20990101T000000Z-deadbeef")
    assert code == 2 and "not in the registry" in out
