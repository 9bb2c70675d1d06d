"""`recsys serve`: the HTTP API, against real server processes on loopback and the embedded Postgres.

Each endpoint, each error status, the API keys, readiness before and after a version
exists, the alias moving under load (no failed request), `--workers 2`, the bind check.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from recsys.serving import registry as R
from recsys.serving.client import Client
from recsys.serving.http_keys import KeyChecker, check_bind, is_loopback, parse_keys, presented_key
from test_bundle import INDEX_CLASS, make_parts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_http import ServerProcess, run_load  # noqa: E402

V1, V2, V3 = "20260101T000000Z-00000001", "20260102T000000Z-00000002", "20260103T000000Z-00000003"
KEYS = "key-one-5d1f0c,key-two-93ab7e"
AUTH = {"X-API-Key": "key-two-93ab7e"}
N_COMMON = 150  # item-0000 .. item-0149 are in every version (item-0000..0004 without purchases)
METRICS = {"name": "EGES+PQ+graph", "warm": {"recall": {"20": 0.31}, "mrr": 0.2, "n_queries": 100},
           "cold": {"recall": {"20": 0.12}, "n_queries": 10},
           "rows": {"popularity": {"warm": {"recall": {"20": 0.1}}, "cold": {"recall": {"20": 0.05}}}}}


@pytest.fixture(scope="module")
def registry(pg_url, tmp_path_factory):
    """Three published versions, production on V1, in a freshly emptied database (this module's)."""
    from recsys.ingest.db import get_engine
    from recsys.ingest.migrate import migrate

    engine = get_engine(url=pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    migrate(engine)
    root = tmp_path_factory.mktemp("http-bundles")
    for seed, version in enumerate((V1, V2, V3)):
        R.publish(engine, root, make_parts(n_items=N_COMMON + 10 * seed, n_cold=5, seed=seed, metrics=METRICS),
                  version, alias=None)
    R.move_alias(engine, "production", V1)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def server(registry, pg_url, tmp_path_factory):
    """One server with API keys on the production alias, checking it every 0.2 s."""
    log = tmp_path_factory.mktemp("http-log") / "serve.log"
    with ServerProcess("--refresh-interval", "0.2", log_path=log,
                       env={"RECSYS_DATABASE_URL": pg_url, "RECSYS_API_KEYS": KEYS}) as proc:
        yield proc
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture()
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        yield client


@pytest.fixture()
def production(registry):
    """The client the server wraps, on V1 (put back there after each test)."""
    R.move_alias(registry, "production", V1)
    client = Client.from_registry(engine=registry, refresh_interval_s=None, index_class=INDEX_CLASS)
    yield client
    R.move_alias(registry, "production", V1)


def wait_for_version(http, version, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http.get("/readyz").json().get("version") == version:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not move to {version}")


def assert_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["code"] == code and error["message"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    return error


def ids_scores(neighbors):
    return [n["item_id"] for n in neighbors], [n["score"] for n in neighbors]


# --------------------------------------------------------------------------- endpoints
def test_health_readiness_and_version(http, production):
    wait_for_version(http, V1)
    assert httpx.get(http.base_url.join("/healthz")).json() == {"status": "ok"}  # no key needed
    ready = httpx.get(http.base_url.join("/readyz"))
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["version"] == V1
    info = http.get("/v1/version").json()
    assert info["version"] == V1 and info["alias"] == "production" and info["kind"] == "full"
    assert info["trained_at"] == production.manifest["created_at"]
    assert info["metrics"]["warm"]["recall"] == {"20": 0.31} and info["metrics"]["row"] == "EGES+PQ+graph"
    assert info["metrics"]["rows_recall_at_20"]["popularity"] == {"warm": 0.1, "cold": 0.05}
    assert info["row_counts"]["items"] == N_COMMON and info["serving_since"]


def test_similar_answers_as_the_client_does(http, production):
    wait_for_version(http, V1)
    for item in ("item-0050", "item-0002"):  # a trained item and one without purchases
        body = http.get(f"/v1/items/{item}/similar", params={"k": 7}).json()
        want = production.similar(item, k=7)
        assert body["version"] == V1 and body["item_id"] == item and body["k"] == 7
        got_ids, got_scores = ids_scores(body["neighbors"])
        assert got_ids == [n.item_id for n in want]
        assert got_scores == pytest.approx([n.score for n in want], abs=1e-5)
        assert [n["rank"] for n in body["neighbors"]] == list(range(1, 8))
        assert body["neighbors"][0]["shared"] == want[0].why["shared"]
        assert body["query"]["query"] == want[0].why["query"] and body["reason"] is None
    filters = dict(in_stock_only=True, same_category=False, exclude=["item-0060", "item-0061"], max_price=80)
    want = production.similar("item-0050", k=5, **filters)
    body = http.get("/v1/items/item-0050/similar?k=5&in_stock_only=true&same_category=false"
                    "&exclude=item-0060,item-0061&max_price=80&min_price=&same_brand=&price_ratio=").json()
    assert ids_scores(body["neighbors"])[0] == [n.item_id for n in want] and len(want) == 5
    assert all(n["in_stock"] and n["price"] <= 80 for n in body["neighbors"])
    repeated = http.get("/v1/items/item-0050/similar?k=5&in_stock_only=1&same_category=false&exclude=item-0060"
                        "&exclude=item-0061&max_price=80").json()
    assert repeated["neighbors"] == body["neighbors"]
    ratio = http.get("/v1/items/item-0050/similar", params={"k": 5, "price_ratio": "0.5,2"}).json()
    assert ids_scores(ratio["neighbors"])[0] == [n.item_id for n in production.similar(
        "item-0050", k=5, price_ratio=(0.5, 2.0))]
    many = http.get("/v1/items/item-0050/similar", params={"k": 1000}).json()  # fewer than k: the reason says why
    assert len(many["neighbors"]) == N_COMMON - 5 - 1 and "Only" in many["reason"]


def test_batch_answers_as_the_client_does(http, production):
    wait_for_version(http, V1)
    ids = ["item-0050", "item-0003", "item-0120", "item-0050"]
    body = http.post("/v1/similar:batch", json={"item_ids": ids, "k": 4, "in_stock_only": True}).json()
    want = production.similar_batch(ids, k=4, in_stock_only=True)
    assert body["version"] == V1 and [r["item_id"] for r in body["results"]] == ids and body["unknown_item_ids"] == []
    for result, neighbors in zip(body["results"], want):
        assert ids_scores(result["neighbors"])[0] == [n.item_id for n in neighbors]
    error = assert_error(http.post("/v1/similar:batch", json={"item_ids": ["item-0050", "nope", "gone"]}),
                         404, "unknown_item")
    assert error["unknown_item_ids"] == ["nope", "gone"] and "new-item" in error["hint"]
    omitted = http.post("/v1/similar:batch", json={"item_ids": ["nope", "item-0050"], "k": 3,
                                                   "unknown": "omit"}).json()
    assert [r["item_id"] for r in omitted["results"]] == ["item-0050"] and omitted["unknown_item_ids"] == ["nope"]
    assert http.post("/v1/similar:batch", json={"item_ids": []}).json()["results"] == []


def test_new_item_answers_as_the_client_does(http, production):
    wait_for_version(http, V1)
    row = {"category": "dairy", "brand": "acme", "price": 42.0, "title": "milk 1l", "in_stock": True}
    body = http.post("/v1/similar:new-item", json={"item": row, "k": 6, "same_category": True}).json()
    want = production.similar_to_new_item(row, k=6, same_category=True)
    got_ids, got_scores = ids_scores(body["neighbors"])
    assert got_ids == [n.item_id for n in want] and got_scores == pytest.approx([n.score for n in want], abs=1e-5)
    assert all(n["category"] == "dairy" for n in body["neighbors"])
    assert body["query"]["ignored_fields"] == ["in_stock", "title"]  # as the client reports them
    unseen = http.post("/v1/similar:new-item", json={"item": {"category": "dairy", "brand": "nobody"}}).json()
    assert unseen["query"]["unknown_values"] == {"brand": "nobody"} and len(unseen["neighbors"]) == 10
    strict = http.post("/v1/similar:new-item", json={"item": row, "strict": True})
    assert "title" in assert_error(strict, 422, "bad_parameters")["message"]


def test_openapi_schema_is_served_and_documents_the_api(server):
    schema = httpx.get(server.url + "/openapi.json").json()  # public, like /docs
    paths = schema["paths"]
    assert {"/v1/items/{item_id}/similar", "/v1/similar:batch", "/v1/similar:new-item", "/v1/version",
            "/healthz", "/readyz"} <= set(paths)
    get = paths["/v1/items/{item_id}/similar"]["get"]
    assert {p["name"] for p in get["parameters"]} >= {"item_id", "k", "in_stock_only", "same_category",
                                                      "same_brand", "min_price", "max_price", "price_ratio", "exclude"}
    assert {"200", "404", "422", "503"} <= set(get["responses"])
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]
    assert httpx.get(server.url + "/docs").status_code == 200


# --------------------------------------------------------------------------- errors
def test_error_statuses_are_json_without_a_stack_trace(http, production):
    wait_for_version(http, V1)
    error = assert_error(http.get("/v1/items/no-such-item/similar"), 404, "unknown_item")
    assert "no-such-item" in error["message"] and "/v1/similar:new-item" in error["hint"]
    for query in ("k=0", "k=abc", "k=1001", "min_price=-1", "max_price=nan", "same_category=maybe",
                  "price_ratio=x", "price_ratio=2,1", "min_price=50&max_price=10", "colour=red"):
        assert_error(http.get(f"/v1/items/item-0050/similar?{query}"), 422, "bad_parameters")
    assert assert_error(http.get("/v1/items/item-0050/similar?k=0"), 422, "bad_parameters")["details"][0]["field"] == "k"
    for body in ({}, {"item_ids": "item-0050"}, {"item_ids": ["item-0050"], "k": 0},
                 {"item_ids": ["item-0050"], "in_stok_only": True}, {"item_ids": ["x"] * 1001}):
        assert_error(http.post("/v1/similar:batch", json=body), 422, "bad_parameters")
    assert_error(http.post("/v1/similar:batch", content=b"{not json", headers={"content-type": "application/json"}),
                 422, "bad_parameters")
    assert_error(http.post("/v1/similar:new-item", json={"category": "dairy"}), 422, "bad_parameters")
    assert_error(http.post("/v1/similar:new-item", json={"item": {"price": -3}}), 422, "bad_parameters")
    assert_error(http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(http.delete("/v1/version"), 405, "method_not_allowed")


def test_api_keys_are_required_on_v1(server):
    url = server.url + "/v1/items/item-0050/similar"
    error = assert_error(httpx.get(url), 401, "unauthorized")
    assert "X-API-Key" in error["hint"]
    assert_error(httpx.get(url, headers={"X-API-Key": "key-one-5d1f0"}), 401, "unauthorized")  # a prefix
    assert_error(httpx.get(url, headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert_error(httpx.post(server.url + "/v1/similar:batch", json={"item_ids": []}), 401, "unauthorized")
    assert httpx.get(url, headers={"X-API-Key": "key-one-5d1f0c"}).status_code == 200
    assert httpx.get(url, headers={"Authorization": "Bearer key-two-93ab7e"}).status_code == 200
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert httpx.get(server.url + path).status_code == 200


def test_key_checks_and_the_bind_check():
    checker = KeyChecker(parse_keys(" a1b2c3, d4e5f6\nxyz "))
    assert checker and checker.matches("d4e5f6") and checker.matches("xyz")
    assert not checker.matches("d4e5f") and not checker.matches("") and not checker.matches(None)
    assert not KeyChecker(()) and not KeyChecker(()).matches("")
    assert presented_key(None, "Bearer tok") == "tok" and presented_key("k", "Bearer tok") == "k"
    assert presented_key(None, "Basic abc") is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("shop.example")
    check_bind("127.0.0.1", (), False)
    check_bind("0.0.0.0", ("k",), False)
    check_bind("0.0.0.0", (), True)
    with pytest.raises(Exception, match="RECSYS_API_KEYS"):
        check_bind("0.0.0.0", (), False)


def test_serve_refuses_a_public_address_without_keys(cli, monkeypatch):
    monkeypatch.delenv("RECSYS_API_KEYS", raising=False)
    code, out = cli("serve", "--host", "0.0.0.0", "--port", "1")
    assert code == 2 and "Refusing to listen on 0.0.0.0" in out and "--insecure" in out


# --------------------------------------------------------------------------- readiness and swaps
def test_readiness_before_and_after_a_version_exists(registry, pg_url):
    """A server on an alias with no version: alive, not ready, 503; ready once the alias is set."""
    with registry.begin() as conn:
        conn.execute(sa.text("DELETE FROM aliases WHERE alias = 'candidate'"))
    with ServerProcess("--alias", "candidate", "--refresh-interval", "0.2", wait_ready=False,
                       env={"RECSYS_DATABASE_URL": pg_url, "RECSYS_API_KEYS": ""}) as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        deadline = time.monotonic() + 30
        while "recsys train" not in httpx.get(server.url + "/readyz").json()["detail"]:  # the first look done
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False and "No candidate" in ready.json()["detail"]
        error = assert_error(httpx.get(server.url + "/v1/items/item-0050/similar"), 503, "no_version")
        assert "recsys train" in error["message"]
        assert_error(httpx.get(server.url + "/v1/version"), 503, "no_version")
        R.move_alias(registry, "candidate", V2)
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready 30 s after the alias was set"
            time.sleep(0.05)
        body = httpx.get(server.url + "/v1/items/item-0050/similar", params={"k": 3}).json()
        assert body["version"] == V2 and len(body["neighbors"]) == 3  # no key: none configured


def test_alias_moves_under_load_fail_no_request(server, registry, production):
    """8 clients for a few seconds while production moves twice (the short form of bench/bench_http.py)."""
    http = httpx.Client(base_url=server.url, headers=AUTH)
    wait_for_version(http, V1)
    ids = [f"item-{i:04d}" for i in range(5, N_COMMON)]
    order = [V2, V3]

    def move(i):
        R.move_alias(registry, "production", order[i], f"load test move {i}")
        return order[i]

    result = run_load(server.url, ids, clients=8, seconds=4.0, moves=2, move=move, batch_share=0.1, batch_size=20,
                      k=10, headers=AUTH, max_requests=20_000)
    summary = result.summary()
    assert summary["errors"] == 0, summary["error_examples"]
    assert summary["alias_moves"] == 2 and summary["requests"] > 100
    assert set(summary["versions_answered"]) >= {V1, V3}, summary  # the swaps happened during the run
    assert summary["single"]["n"] > 0 and summary["batch"]["n"] > 0
    wait_for_version(http, V3)
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "version": V3, "detail": None}
    http.close()


def test_workers_serve_the_same_api(registry, pg_url):
    with ServerProcess("--workers", "2", "--refresh-interval", "0.5",
                       env={"RECSYS_DATABASE_URL": pg_url, "RECSYS_API_KEYS": KEYS}) as server:
        with httpx.Client(base_url=server.url, headers=AUTH) as http:
            for _ in range(20):  # connections land on both workers
                with httpx.Client(base_url=server.url, headers=AUTH) as fresh:
                    body = fresh.get("/v1/items/item-0050/similar", params={"k": 3}).json()
                    assert body["version"] == V1 and len(body["neighbors"]) == 3
            assert http.post("/v1/similar:batch", json={"item_ids": ["item-0050"], "k": 2}).status_code == 200
            assert_error(http.get("/v1/items/nope/similar"), 404, "unknown_item")


def test_the_http_layer_loads_no_torch_numba_or_prefect(tmp_path):
    code = """
import json, sys
from recsys.app.cli_http import register
from recsys.serving.export import export_neighbours
from recsys.serving.http import ServeConfig, create_app
from recsys.serving.http_server import serve
app = create_app(ServeConfig(bundle=sys.argv[1]))
print(json.dumps(sorted(m for m in ("torch", "numba", "prefect") if m in sys.modules)))
"""
    fixture = Path(__file__).resolve().parent / "fixtures" / "bundle-format1"
    out = subprocess.run([sys.executable, "-c", code, str(fixture)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_an_internal_failure_is_a_json_500_without_its_traceback(monkeypatch):
    """In-process (the failure is provoked): the message says where to look, the body holds no trace."""
    import asyncio

    from recsys.serving.http import ServeConfig, create_app

    fixture = Path(__file__).resolve().parent / "fixtures" / "bundle-format1"
    app = create_app(ServeConfig(bundle=str(fixture)), api_keys=())
    holder = app.state.holder
    assert holder.load_once()

    def broken(*args, **kwargs):
        raise RuntimeError("secret internals /srv/recsys/bundle.py line 12")

    monkeypatch.setattr(holder.client, "similar", broken)

    async def call():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/v1/items/item-0010/similar")

    response = asyncio.run(call())
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in response.text and "log" in error["message"]
