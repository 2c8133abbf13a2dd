//! The review HTTP surface over real sockets: the ResultsDB v2.0 API (also through the real
//! `resultsdb_api` Python client), the runs API, auth, errors, files and the live log. Each
//! HTTP test runs on SQLite and on PostgreSQL (a fresh database; skipped when
//! FERROTRON_TEST_PG is unset).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrotron::store::{NewRun, Phase, RunState, Store};
use ferrotron::web::{Limits, WebState, router};
use serde_json::{Value, json};
use uuid::Uuid;

const TOKEN: &str = "s3cret-token";

struct Server {
    url: String,
    store: Store,
    data: tempfile::TempDir,
    _pg: Option<common::PgDb>,
}

async fn serve(store: Store, pg: Option<common::PgDb>) -> Server {
    serve_with(store, pg, Limits::default()).await
}

async fn serve_with(store: Store, pg: Option<common::PgDb>, limits: Limits) -> Server {
    let data = tempfile::tempdir().unwrap();
    let state = WebState::new(store.clone(), data.path().to_path_buf(), vec![TOKEN.into()])
        .with_limits(limits);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    Server {
        url,
        store,
        data,
        _pg: pg,
    }
}

async fn sqlite_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}/db.sqlite", dir.path().display()))
        .await
        .unwrap();
    let s = serve(store, None).await;
    // Keep the database directory alive as long as the data dir (leaked on purpose: tiny).
    std::mem::forget(dir);
    s
}

async fn postgres_server() -> Option<Server> {
    let pg = common::PgDb::create().await?;
    let store = Store::open(&pg.url).await.unwrap();
    Some(serve(store, Some(pg)).await)
}

/// Runs a test body on SQLite and on PostgreSQL.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::sqlite_server().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                match super::postgres_server().await {
                    Some(s) => super::$name(s).await,
                    None => common_skip(),
                }
            }
            fn common_skip() {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    b"SKIPPED: FERROTRON_TEST_PG not set (PostgreSQL half did not run)\n",
                );
            }
        }
    };
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn get(s: &Server, path: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}{path}", s.url))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"));
    (status, v)
}

async fn post(s: &Server, path: &str, body: Value, bearer: Option<&str>) -> (u16, Value) {
    let mut req = client().post(format!("{}{path}", s.url)).json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn count_results(s: &Server) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM results")
        .fetch_one(s.store.pool())
        .await
        .unwrap()
}

fn message(v: &Value) -> &str {
    v["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {v}"))
}

// --- ResultsDB API -------------------------------------------------------------------------

on_both!(resultsdb_results_filters_and_pages);
async fn resultsdb_results_filters_and_pages(s: Server) {
    let group = Uuid::now_v7();
    for i in 0..5 {
        let (st, v) = post(
            &s,
            "/api/v2.0/results",
            json!({
                "outcome": if i % 2 == 0 { "PASSED" } else { "FAILED" },
                "testcase": {"name": format!("dist.check{}", i % 2), "ref_url": "http://tc"},
                "groups": [group.to_string()],
                "note": format!("n{i}"),
                "data": {"item": format!("pkg-{}", i % 3), "type": "koji_build", "arch": ["x86_64", "noarch"]},
                "submit_time": format!("2025-01-1{}T10:00:00", i + 1),
            }),
            Some(TOKEN),
        )
        .await;
        assert_eq!(st, 201, "{v}");
        assert_eq!(v["outcome"], if i % 2 == 0 { "PASSED" } else { "FAILED" });
        assert_eq!(v["data"]["arch"], json!(["x86_64", "noarch"]));
        assert_eq!(v["groups"], json!([group.to_string()]));
        assert!(
            v["href"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/api/v2.0/results/", s.url))
        );
    }

    // item filter, newest first, data values as lists, absolute hrefs.
    let (st, v) = get(&s, "/api/v2.0/results?item=pkg-0").await;
    assert_eq!(st, 200);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["submit_time"], "2025-01-14T10:00:00");
    assert_eq!(data[1]["submit_time"], "2025-01-11T10:00:00");
    assert_eq!(data[0]["data"]["item"], json!(["pkg-0"]));
    assert_eq!(data[0]["testcase"]["name"], "dist.check1");
    assert_eq!(data[0]["testcase"]["ref_url"], "http://tc");
    assert_eq!(v["prev"], Value::Null);
    assert_eq!(v["next"], Value::Null);

    // OR within a parameter, AND across; like on testcases and data; outcome; since; sort.
    let n = |v: &Value| v["data"].as_array().unwrap().len();
    assert_eq!(n(&get(&s, "/api/v2.0/results?item=pkg-0,pkg-1").await.1), 4);
    assert_eq!(
        n(&get(&s, "/api/v2.0/results?item=pkg-0&outcome=PASSED")
            .await
            .1),
        1
    );
    assert_eq!(
        n(&get(&s, "/api/v2.0/results?testcases=dist.check0").await.1),
        3
    );
    assert_eq!(
        n(&get(&s, "/api/v2.0/results?testcases:like=dist.*").await.1),
        5
    );
    assert_eq!(
        n(&get(&s, "/api/v2.0/results?item:like=pkg-*&arch=noarch")
            .await
            .1),
        5
    );
    assert_eq!(n(&get(&s, "/api/v2.0/results?type=rpm").await.1), 0);
    assert_eq!(
        n(&get(&s, &format!("/api/v2.0/results?groups={group}"))
            .await
            .1),
        5
    );
    assert_eq!(n(&get(&s, "/api/v2.0/results?since=2025-01-13").await.1), 3);
    assert_eq!(
        n(
            &get(&s, "/api/v2.0/results?since=2025-01-12,2025-01-13T10:00:00")
                .await
                .1
        ),
        2
    );
    let (_, v) = get(&s, "/api/v2.0/results?_sort=asc:submit_time&limit=1").await;
    assert_eq!(v["data"][0]["note"], "n0");

    // Pages: absolute prev/next from the Host, carrying the query; past the end: empty.
    let (_, p0) = get(&s, "/api/v2.0/results?type=koji_build&limit=2").await;
    assert_eq!(n(&p0), 2);
    assert_eq!(p0["prev"], Value::Null);
    let next = p0["next"].as_str().unwrap();
    assert_eq!(
        next,
        format!("{}/api/v2.0/results?type=koji_build&limit=2&page=1", s.url)
    );
    let (_, p2) = get(&s, "/api/v2.0/results?type=koji_build&limit=2&page=2").await;
    assert_eq!(n(&p2), 1);
    assert_eq!(p2["next"], Value::Null);
    assert!(p2["prev"].as_str().unwrap().ends_with("page=1"));
    let (_, p9) = get(&s, "/api/v2.0/results?type=koji_build&limit=2&page=9").await;
    assert_eq!(n(&p9), 0);
    assert_eq!(p9["next"], Value::Null);
    assert!(p9["prev"].as_str().unwrap().ends_with("page=8"));
    let r = client()
        .get(format!("{}/api/v2.0/results?limit=1", s.url))
        .header("Host", "results.example.org")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["next"],
        "http://results.example.org/api/v2.0/results?limit=1&page=1"
    );

    // Latest: newest per testcase; with _distinct_on per testcase and data value.
    let (_, v) = get(&s, "/api/v2.0/results/latest?type=koji_build").await;
    assert_eq!(v.as_object().unwrap().keys().collect::<Vec<_>>(), ["data"]);
    let notes: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["note"].as_str().unwrap())
        .collect();
    assert_eq!(notes, ["n4", "n3"]);
    let (_, v) = get(
        &s,
        "/api/v2.0/results/latest?type=koji_build&_distinct_on=item",
    )
    .await;
    let mut notes: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["note"].as_str().unwrap())
        .collect();
    notes.sort();
    // check0: pkg-0 n0/n3? no — check0 has n0 (pkg-0), n2 (pkg-2), n4 (pkg-1); check1 has n1 (pkg-1), n3 (pkg-0).
    assert_eq!(notes, ["n0", "n1", "n2", "n3", "n4"]);
    let (_, v) = get(&s, "/api/v2.0/results/latest?item=pkg-0&_distinct_on=type").await;
    let notes: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["note"].as_str().unwrap())
        .collect();
    assert_eq!(notes, ["n3", "n0"]);

    // One result, groups, testcases.
    let id = p0["data"][0]["id"].as_i64().unwrap();
    let (st, v) = get(&s, &format!("/api/v2.0/results/{id}")).await;
    assert_eq!((st, v["id"].as_i64()), (200, Some(id)));
    let (st, v) = get(&s, &format!("/api/v2.0/groups/{group}")).await;
    assert_eq!(st, 200);
    assert_eq!(v["results_count"], 5);
    assert_eq!(
        v["results"],
        format!("{}/api/v2.0/results?groups={group}", s.url)
    );
    assert_eq!(
        n(&get(
            &s,
            &format!("/api/v2.0/groups/{group}/results?outcome=FAILED")
        )
        .await
        .1),
        2
    );
    let (_, v) = get(&s, "/api/v2.0/testcases?name:like=dist.*").await;
    assert_eq!(n(&v), 2);
    let (st, v) = get(&s, "/api/v2.0/testcases/dist.check1").await;
    assert_eq!((st, v["ref_url"].as_str()), (200, Some("http://tc")));
    assert_eq!(
        n(&get(&s, "/api/v2.0/testcases/dist.check1/results").await.1),
        2
    );
    let (st, v) = post(
        &s,
        "/api/v2.0/testcases",
        json!({"name": "new.tc", "ref_url": "u"}),
        Some(TOKEN),
    )
    .await;
    assert_eq!((st, v["name"].as_str()), (201, Some("new.tc")));
    let (st, v) = post(
        &s,
        "/api/v2.0/groups",
        json!({"description": "made by hand"}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(v["results_count"], 0);
    let (_, v) = get(&s, "/api/v2.0/groups?description:like=made*").await;
    assert_eq!(n(&v), 1);
    let (st, v) = get(&s, "/api/v2.0/").await;
    assert_eq!(
        (
            st,
            v["results"]
                .as_str()
                .map(|u| u.ends_with("/api/v2.0/results"))
        ),
        (300, Some(true))
    );
    let (st, _) = get(&s, "/api/v2.0/healthcheck").await;
    assert_eq!(st, 200);
}

on_both!(resultsdb_errors_and_auth);
async fn resultsdb_errors_and_auth(s: Server) {
    // 400 with a message naming the parameter and value.
    for (path, words) in [
        (
            "/api/v2.0/results?since=notadate",
            &["since", "notadate"][..],
        ),
        ("/api/v2.0/results?limit=x", &["limit", "x"]),
        ("/api/v2.0/results?page=x", &["page", "x"]),
        ("/api/v2.0/results?outcome=MAYBE", &["outcome", "MAYBE"]),
        ("/api/v2.0/results?item:regex=x", &["item:regex"]),
        (
            "/api/v2.0/results/latest?_distinct_on=item",
            &["_distinct_on"],
        ),
        ("/api/v2.0/groups?colour=red", &["colour"]),
        ("/api/v1/runs?state=sleeping", &["state", "sleeping"]),
    ] {
        let (st, v) = get(&s, path).await;
        assert_eq!(st, 400, "{path}: {v}");
        for w in words {
            assert!(
                message(&v).contains(w),
                "{path}: `{}` lacks {w}",
                message(&v)
            );
        }
    }
    // 404 with a message.
    for path in [
        "/api/v2.0/results/999999",
        "/api/v2.0/results/abc",
        "/api/v2.0/groups/0190a4c8-0000-7000-8000-000000000009",
        "/api/v2.0/groups/0190a4c8-0000-7000-8000-000000000009/results",
        "/api/v2.0/testcases/nope",
        "/api/v1/runs/0190a4c8-0000-7000-8000-000000000009",
        "/api/v1/runs/not-a-uuid",
    ] {
        let (st, v) = get(&s, path).await;
        assert_eq!(st, 404, "{path}: {v}");
        assert!(message(&v).contains("not found"), "{path}: {v}");
    }
    let (_, v) = get(&s, "/api/v2.0/results/999999").await;
    assert_eq!(message(&v), "Result not found");

    // No token, a wrong token: 401 and nothing stored; bad bodies: 400 naming the field.
    let body = json!({"outcome": "PASSED", "testcase": "t", "data": {"item": "x"}});
    for bearer in [None, Some("wrong")] {
        for path in [
            "/api/v2.0/results",
            "/api/v2.0/testcases",
            "/api/v2.0/groups",
        ] {
            let (st, v) = post(
                &s,
                path,
                json!({"name": "t", "outcome": "PASSED", "testcase": "t"}),
                bearer,
            )
            .await;
            assert_eq!(st, 401, "{path} {bearer:?}: {v}");
            assert!(!message(&v).is_empty());
        }
    }
    let (st, _) = post(
        &s,
        "/api/v2.0/results",
        json!({"outcome": "PASSED", "testcase": "t", "_auth_token": "wrong"}),
        None,
    )
    .await;
    assert_eq!(st, 401);
    assert_eq!(count_results(&s).await, 0);
    let tcs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM testcases")
        .fetch_one(s.store.pool())
        .await
        .unwrap();
    assert_eq!(tcs, 0, "a refused POST created a testcase");

    for (b, word) in [
        (json!({"testcase": "t"}), "outcome"),
        (json!({"outcome": "SUPER", "testcase": "t"}), "SUPER"),
        (
            json!({"outcome": "PASSED", "testcase": "t", "groups": [""]}),
            "empty",
        ),
        (
            json!({"outcome": "PASSED", "testcase": "t", "data": {"a:b": 1}}),
            "a:b",
        ),
        (json!([1, 2]), "object"),
        // PostgreSQL cannot store NUL: refused up front, naming the field, on both stores.
        (
            json!({"outcome": "PASSED", "testcase": "t", "note": "a\u{0}b"}),
            "note: contains a NUL",
        ),
        (
            json!({"outcome": "PASSED", "testcase": "t", "data": {"k": ["ok", "x\u{0}"]}}),
            "data: contains a NUL",
        ),
    ] {
        let (st, v) = post(&s, "/api/v2.0/results", b, Some(TOKEN)).await;
        assert_eq!(st, 400, "{v}");
        assert!(message(&v).contains(word), "{v}");
    }
    let r = client()
        .post(format!("{}/api/v2.0/results", s.url))
        .bearer_auth(TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );
    assert_eq!(count_results(&s).await, 0);

    // The token in the body and as HTTP Basic password both work.
    let (st, _) = post(
        &s,
        "/api/v2.0/results",
        json!({"outcome": "PASSED", "testcase": "t", "_auth_token": TOKEN}),
        None,
    )
    .await;
    assert_eq!(st, 201);
    let r = client()
        .post(format!("{}/api/v2.0/results", s.url))
        .basic_auth("anyone", Some(TOKEN))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(count_results(&s).await, 2);
}

// --- ResultsDB fidelity (issue 17): what ResultsDB 2.2 accepts and answers -----------------

/// What a test expects of a ResultsDB validation error: 400, a message naming `field`, and
/// `validation_error: [{loc: [field], msg}]`.
fn assert_validation_error(what: &str, st: u16, v: &Value, field: &str) {
    assert_eq!(st, 400, "{what}: {v}");
    assert!(message(v).contains(field), "{what}: {v}");
    let e = &v["validation_error"][0];
    assert_eq!(e["loc"], json!([field]), "{what}: {v}");
    assert!(
        e["msg"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {v}"
    );
}

fn notes(v: &Value) -> Vec<&str> {
    v["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data in {v}"))
        .iter()
        .map(|r| r["note"].as_str().unwrap())
        .collect()
}

const SLASH_NAME: &str = "fedora-ci.koji-build./plans/basic.functional";

on_both!(resultsdb_testcase_names_with_slashes);
async fn resultsdb_testcase_names_with_slashes(s: Server) {
    let (st, v) = post(
        &s,
        "/api/v2.0/results",
        json!({"outcome": "PASSED", "testcase": {"name": SLASH_NAME, "ref_url": "http://tc"}, "note": "n0"}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 201, "{v}");
    // The href keeps the slashes, and is served.
    let href = v["testcase"]["href"].as_str().unwrap().to_string();
    assert_eq!(href, format!("{}/api/v2.0/testcases/{SLASH_NAME}", s.url));
    let (st, v) = get(&s, &format!("/api/v2.0/testcases/{SLASH_NAME}")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["ref_url"].as_str()),
        (Some(SLASH_NAME), Some("http://tc"))
    );
    let (st, v) = get(&s, &format!("/api/v2.0/testcases/{SLASH_NAME}/results")).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(notes(&v), ["n0"]);
    // Percent-encoded slashes name the same testcase.
    let (st, v) = get(
        &s,
        "/api/v2.0/testcases/fedora-ci.koji-build.%2Fplans%2Fbasic.functional",
    )
    .await;
    assert_eq!((st, v["name"].as_str()), (200, Some(SLASH_NAME)));
    for missing in [
        "/api/v2.0/testcases/fedora-ci.koji-build./plans/other",
        "/api/v2.0/testcases/fedora-ci.koji-build./plans/other/results",
    ] {
        let (st, v) = get(&s, missing).await;
        assert_eq!((st, message(&v)), (404, "Testcase not found"), "{missing}");
    }
}

on_both!(resultsdb_post_stores_what_resultsdb_stores);
async fn resultsdb_post_stores_what_resultsdb_stores(s: Server) {
    // Bodies that ResultsDB 2.2 stores and ferrotron used to refuse; the raw text keeps the
    // order of the nested object's keys, which the stored string form must keep too.
    let body = r#"{"outcome": "  passed ", "testcase": "tc.kinds",
        "groups": ["not-a-uuid", {"uuid": "my group/1", "description": "d"}],
        "submit_time": "1736680835123",
        "data": {"item": "pkg-1", "nested": {"z": 1, "a": [true, null, "it's"]}, "none": null,
                 "list": ["x", 2, 1.5, null, {"k": "v"}, ["a"]], "flag": false, "big": 1e16,
                 "empty": []}}"#;
    let r = client()
        .post(format!("{}/api/v2.0/results", s.url))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_i64().unwrap();
    let (_, v) = get(&s, &format!("/api/v2.0/results/{id}")).await;
    assert_eq!(v, created, "a read gives back what the POST answered");
    assert_eq!(v["outcome"], "PASSED");
    assert_eq!(v["submit_time"], "2025-01-12T11:20:35.123000");
    assert_eq!(v["groups"], json!(["not-a-uuid", "my group/1"]));
    assert_eq!(
        v["data"],
        json!({
            "item": ["pkg-1"],
            "nested": ["{'z': 1, 'a': [True, None, \"it's\"]}"],
            "none": ["None"],
            "list": ["x", "2", "1.5", "None", "{'k': 'v'}", "['a']"],
            "flag": ["False"],
            "big": ["1e+16"],
        })
    );
    // Stored as strings, so they filter as ResultsDB's do.
    for filter in ["none=None", "flag=False", "nested:like=*True*"] {
        let (_, v) = get(&s, &format!("/api/v2.0/results?{filter}")).await;
        assert_eq!(v["data"][0]["id"], id, "{filter}: {v}");
    }

    // Groups with ids that are not uuids are served like any other.
    let (st, g) = get(&s, "/api/v2.0/groups/not-a-uuid").await;
    assert_eq!((st, g["results_count"].as_i64()), (200, Some(1)), "{g}");
    assert_eq!(g["href"], format!("{}/api/v2.0/groups/not-a-uuid", s.url));
    // An id with a slash: ResultsDB cannot route it; ferrotron serves it percent-encoded, as
    // its href spells it.
    let (st, g) = get(&s, "/api/v2.0/groups/my%20group%2F1").await;
    assert_eq!((st, g["description"].as_str()), (200, Some("d")), "{g}");
    assert_eq!(
        g["href"],
        format!("{}/api/v2.0/groups/my%20group%2F1", s.url)
    );
    let (_, v) = get(&s, "/api/v2.0/results?groups=not-a-uuid").await;
    assert_eq!(v["data"][0]["id"], id);
    let (st, v) = get(&s, "/api/v2.0/groups/not-a-uuid/results").await;
    assert_eq!((st, v["data"][0]["id"].as_i64()), (200, Some(id)));
    let (st, v) = post(
        &s,
        "/api/v2.0/groups",
        json!({"uuid": "hand-made", "description": "x"}),
        Some(TOKEN),
    )
    .await;
    assert_eq!((st, v["uuid"].as_str()), (201, Some("hand-made")), "{v}");

    // submit_time with a `+00` offset, an offset, and milliseconds as a number.
    for (t, want) in [
        (
            json!("2025-01-12T11:20:35.5+00"),
            "2025-01-12T11:20:35.500000",
        ),
        (
            json!("2025-01-12T13:20:35.000001+02:00"),
            "2025-01-12T11:20:35.000001",
        ),
        (json!("2025-01-12T11:20:35Z"), "2025-01-12T11:20:35"),
        (json!(1736680835000_i64), "2025-01-12T11:20:35"),
        (json!(" 1736680835001 "), "2025-01-12T11:20:35.001000"),
    ] {
        let (st, v) = post(
            &s,
            "/api/v2.0/results",
            json!({"outcome": "INFO", "testcase": "tc.times", "submit_time": t}),
            Some(TOKEN),
        )
        .await;
        assert_eq!(
            (st, v["submit_time"].as_str()),
            (201, Some(want)),
            "{t}: {v}"
        );
    }
    // What ResultsDB refuses stays refused, as a validation error.
    for (b, field) in [
        (
            json!({"outcome": "INFO", "testcase": "t", "submit_time": "soon"}),
            "submit_time",
        ),
        (
            json!({"outcome": "INFO", "testcase": "t", "submit_time": 1.5}),
            "submit_time",
        ),
        (json!({"outcome": "MAYBE", "testcase": "t"}), "outcome"),
        (json!({"outcome": "   ", "testcase": "t"}), "outcome"),
        (
            json!({"outcome": "INFO", "testcase": {"ref_url": "u"}}),
            "testcase",
        ),
        (
            json!({"outcome": "INFO", "testcase": "t", "data": [1]}),
            "data",
        ),
        (
            json!({"outcome": "INFO", "testcase": "t", "data": {"a:b": 1}}),
            "data",
        ),
        (
            json!({"outcome": "INFO", "testcase": "t", "groups": "g"}),
            "groups",
        ),
    ] {
        let (st, v) = post(&s, "/api/v2.0/results", b.clone(), Some(TOKEN)).await;
        assert_validation_error(&b.to_string(), st, &v, field);
    }
}

on_both!(resultsdb_group_objects_update_the_group);
async fn resultsdb_group_objects_update_the_group(s: Server) {
    let g = Uuid::now_v7().to_string();
    let (st, _) = post(
        &s,
        "/api/v2.0/groups",
        json!({"uuid": g, "description": "first", "ref_url": "http://one"}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 201);
    let result = |groups: Value| {
        let s = &s;
        async move {
            let (st, v) = post(
                s,
                "/api/v2.0/results",
                json!({"outcome": "PASSED", "testcase": "tc.g", "groups": groups}),
                Some(TOKEN),
            )
            .await;
            assert_eq!(st, 201, "{v}");
        }
    };
    let group = || async { get(&s, &format!("/api/v2.0/groups/{g}")).await.1 };
    // The latest description wins; the ref_url not given is kept.
    result(json!([{"uuid": g, "description": "second"}])).await;
    let v = group().await;
    assert_eq!(
        (v["description"].as_str(), v["ref_url"].as_str()),
        (Some("second"), Some("http://one"))
    );
    // Naming the group by id changes nothing; the later of two mentions wins.
    result(
        json!([g, {"uuid": g, "ref_url": "http://two"}, {"uuid": g, "ref_url": "http://three"}]),
    )
    .await;
    let v = group().await;
    assert_eq!(
        (v["description"].as_str(), v["ref_url"].as_str()),
        (Some("second"), Some("http://three"))
    );
    // A testcase object's ref_url is applied the same way: absent keeps, null clears.
    let tc_ref = |testcase: Value| {
        let s = &s;
        async move {
            let (st, v) = post(
                s,
                "/api/v2.0/results",
                json!({"outcome": "PASSED", "testcase": testcase}),
                Some(TOKEN),
            )
            .await;
            assert_eq!(st, 201, "{v}");
            v["testcase"]["ref_url"].clone()
        }
    };
    assert_eq!(
        tc_ref(json!({"name": "tc.ref", "ref_url": "http://a"})).await,
        "http://a"
    );
    assert_eq!(tc_ref(json!("tc.ref")).await, "http://a");
    assert_eq!(tc_ref(json!({"name": "tc.ref"})).await, "http://a");
    assert_eq!(
        tc_ref(json!({"name": "tc.ref", "ref_url": null})).await,
        Value::Null
    );
    let (_, v) = get(&s, "/api/v2.0/testcases/tc.ref").await;
    assert_eq!(v["ref_url"], Value::Null);

    // An explicit null clears, as ResultsDB's `grp.get("description", …)` does.
    result(json!([{"uuid": g, "description": null}])).await;
    let v = group().await;
    assert_eq!(
        (v["description"].as_str(), v["ref_url"].as_str()),
        (None, Some("http://three"))
    );
    assert_eq!(v["results_count"], 3);
}

on_both!(resultsdb_tolerated_parameters_fall_back);
async fn resultsdb_tolerated_parameters_fall_back(s: Server) {
    for (i, outcome) in ["PASSED", "FAILED", "PASSED"].iter().enumerate() {
        let (st, _) = post(
            &s,
            "/api/v2.0/results",
            json!({"outcome": outcome, "testcase": "tc.p", "note": format!("n{i}"),
                   "data": {"item": "pkg"}, "submit_time": format!("2025-01-1{}T10:00:00.000000", i + 1)}),
            Some(TOKEN),
        )
        .await;
        assert_eq!(st, 201);
    }
    // limit=0 and -1: no rows, a next link (ResultsDB answers the same for both).
    for limit in ["0", "-1"] {
        let (st, v) = get(&s, &format!("/api/v2.0/results?limit={limit}")).await;
        assert_eq!(st, 200, "{limit}: {v}");
        assert_eq!(notes(&v), Vec::<&str>::new(), "{limit}");
        assert!(
            v["next"].as_str().unwrap().ends_with("page=1"),
            "{limit}: {v}"
        );
    }
    // Over the maximum: served (as MAX_LIMIT rows at most).
    let (st, v) = get(&s, "/api/v2.0/results?limit=1000000").await;
    assert_eq!((st, notes(&v)), (200, vec!["n2", "n1", "n0"]));
    assert_eq!(v["next"], Value::Null);
    // A negative page is page 0.
    let (st, v) = get(&s, "/api/v2.0/results?page=-1&limit=2").await;
    assert_eq!((st, notes(&v)), (200, vec!["n2", "n1"]));
    assert_eq!(v["prev"], Value::Null);
    // An unsupported sort is newest first.
    for sort in ["sideways", "asc:id", "ASC:submit_time", "disable_sorting"] {
        let (st, v) = get(&s, &format!("/api/v2.0/results?_sort={sort}")).await;
        assert_eq!((st, notes(&v)), (200, vec!["n2", "n1", "n0"]), "{sort}");
    }
    let (_, v) = get(&s, "/api/v2.0/results?_sort=asc:submit_time").await;
    assert_eq!(notes(&v), ["n0", "n1", "n2"]);
    // /results/latest ignores `outcome` (but still checks its spelling), and page/limit.
    let (st, v) = get(
        &s,
        "/api/v2.0/results/latest?item=pkg&outcome=FAILED&limit=0&page=3",
    )
    .await;
    assert_eq!((st, notes(&v)), (200, vec!["n2"]), "{v}");
    let (st, v) = get(&s, "/api/v2.0/results/latest?item=pkg&outcome=MAYBE").await;
    assert_validation_error("latest outcome=MAYBE", st, &v, "outcome");
    let (st, v) = get(
        &s,
        "/api/v2.0/results/latest?outcome=PASSED&_distinct_on=item",
    )
    .await;
    assert_eq!(
        st, 400,
        "outcome is no filter beside _distinct_on there: {v}"
    );
}

on_both!(resultsdb_shapes_match);
async fn resultsdb_shapes_match(s: Server) {
    // Unknown routes: ResultsDB's JSON 404, whatever the method.
    for path in [
        "/api/v2.0/nothing",
        "/api/v2.0/results/1/more",
        "/nowhere",
        "/api/v3/x",
    ] {
        let (st, v) = get(&s, path).await;
        assert_eq!((st, v), (404, json!({"message": "Not found"})), "{path}");
    }
    let (st, v) = post(&s, "/api/v2.0/nothing", json!({}), Some(TOKEN)).await;
    assert_eq!((st, v), (404, json!({"message": "Not found"})));
    let r = client()
        .delete(format!("{}/api/v2.0/results", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        405,
        "a known path with the wrong method"
    );

    // Validation errors carry ResultsDB's `validation_error` and ferrotron's `message`.
    for (path, field) in [
        ("/api/v2.0/results?limit=x", "limit"),
        ("/api/v2.0/results?page=1.5", "page"),
        ("/api/v2.0/results?since=notadate", "since"),
        ("/api/v2.0/results?outcome=MAYBE", "outcome"),
        ("/api/v2.0/groups?limit=x", "limit"),
        ("/api/v2.0/testcases?page=x", "page"),
    ] {
        let (st, v) = get(&s, path).await;
        assert_validation_error(path, st, &v, field);
    }

    // The API root: 300, ResultsDB's keys, the outcomes accepted.
    let (st, v) = get(&s, "/api/v2.0").await;
    assert_eq!(st, 300);
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "documentation",
            "groups",
            "message",
            "outcomes",
            "results",
            "testcases"
        ]
    );
    assert_eq!(v["groups"], format!("{}/api/v2.0/groups", s.url));
    let outcomes: Vec<&str> = v["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_str().unwrap())
        .collect();
    for o in ["PASSED", "INFO", "FAILED", "NEEDS_INSPECTION"] {
        assert!(outcomes.contains(&o), "{outcomes:?}");
    }

    // `:like` is case-sensitive on both stores.
    for (tc, item, desc) in [
        ("Dist.Upper", "PKG-A", "Upper group"),
        ("dist.lower", "pkg-a", "lower group"),
    ] {
        let (st, _) = post(
            &s,
            "/api/v2.0/results",
            json!({"outcome": "PASSED", "testcase": tc, "note": tc, "data": {"item": item},
                   "groups": [{"uuid": Uuid::now_v7().to_string(), "description": desc}]}),
            Some(TOKEN),
        )
        .await;
        assert_eq!(st, 201);
    }
    for (path, want) in [
        (
            "/api/v2.0/results?testcases:like=dist.*",
            vec!["dist.lower"],
        ),
        (
            "/api/v2.0/results?testcases:like=Dist.*",
            vec!["Dist.Upper"],
        ),
        ("/api/v2.0/results?item:like=pkg-*", vec!["dist.lower"]),
        ("/api/v2.0/results?item:like=PKG-*", vec!["Dist.Upper"]),
        ("/api/v2.0/results?item:like=PkG-*", vec![]),
    ] {
        let (_, v) = get(&s, path).await;
        assert_eq!(notes(&v), want, "{path}");
    }
    let (_, v) = get(&s, "/api/v2.0/testcases?name:like=dist.*").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = get(&s, "/api/v2.0/groups?description:like=upper*").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 0, "{v}");
}

on_both!(resultsdb_latest_is_bounded);
async fn resultsdb_latest_is_bounded(s: Server) {
    // A second server on the same store, with a small bound.
    let small = serve_with(
        s.store.clone(),
        None,
        Limits {
            latest_max: 2,
            ..Limits::default()
        },
    )
    .await;
    for i in 0..3 {
        let (st, _) = post(
            &small,
            "/api/v2.0/results",
            json!({"outcome": "PASSED", "testcase": format!("tc.{i}"), "note": format!("n{i}"),
                   "data": {"item": "pkg"}, "submit_time": format!("2025-01-1{}T10:00:00.000000", i + 1)}),
            Some(TOKEN),
        )
        .await;
        assert_eq!(st, 201);
    }
    let latest = |srv: &Server| {
        let url = format!("{}/api/v2.0/results/latest?item=pkg", srv.url);
        async move {
            let r = client().get(url).send().await.unwrap();
            let truncated = r.headers().get("x-ferrotron-truncated").cloned();
            (truncated, r.json::<Value>().await.unwrap())
        }
    };
    let (truncated, v) = latest(&small).await;
    assert_eq!(notes(&v), ["n2", "n1"], "the newest, up to the bound");
    assert_eq!(truncated.unwrap(), "true");
    let (truncated, v) = latest(&s).await;
    assert_eq!(notes(&v), ["n2", "n1", "n0"]);
    assert!(truncated.is_none());
}

// --- runs API, files, live log ---------------------------------------------------------------

/// A run as the runner records it, with a log and artifacts under the data dir.
async fn make_run(s: &Server, task: &str, item: &str, state: RunState) -> Uuid {
    let uuid = Uuid::now_v7();
    let dir = s.data.path().join("artifacts").join(uuid.to_string());
    std::fs::create_dir_all(dir.join("task/sub")).unwrap();
    std::fs::write(
        dir.join("ferrotron.log"),
        "ferrotron: run starts\n[lint] line one\n",
    )
    .unwrap();
    std::fs::write(dir.join("task/sub/report.txt"), "report body\n").unwrap();
    s.store
        .create_run(&NewRun {
            uuid,
            task: task.into(),
            item: item.into(),
            item_type: "koji_build".into(),
            arch: "x86_64".into(),
            backend: "libvirt".into(),
            params: json!({"formula": "tasks/shell-lint/runtask.yml", "jobid": "-1", "image": "tiny", "task_timeout_s": 600, "keep_instance": false}),
            log_path: dir.join("ferrotron.log").display().to_string(),
            artifacts_dir: dir.join("task").display().to_string(),
            owner: Some("test".into()),
        })
        .await
        .unwrap();
    s.store
        .set_run_state(uuid, RunState::Running)
        .await
        .unwrap();
    s.store
        .record_phases(
            uuid,
            &[Phase {
                name: "boot".into(),
                started_at: time::OffsetDateTime::now_utc(),
                duration: Duration::from_millis(1500),
            }],
        )
        .await
        .unwrap();
    if state.is_terminal() {
        s.store
            .finish_run(uuid, state, Some(0), None)
            .await
            .unwrap();
    }
    uuid
}

fn secret_outside(data: &Path) -> PathBuf {
    let keys = data.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    std::fs::write(keys.join("id_ed25519"), "PRIVATE KEY").unwrap();
    keys
}

on_both!(runs_api_cancel_and_files);
async fn runs_api_cancel_and_files(s: Server) {
    let done = make_run(&s, "shell-lint", "pkg-a", RunState::Finished).await;
    let live = make_run(&s, "rpmlint", "pkg-b", RunState::Running).await;
    let keys = secret_outside(s.data.path());
    // A task that planted a link to the keys must not get them served.
    std::os::unix::fs::symlink(
        &keys,
        s.data.path().join(format!("artifacts/{done}/task/keys")),
    )
    .unwrap();

    let (st, v) = get(&s, "/api/v1/runs").await;
    assert_eq!(st, 200);
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0]["uuid"], live.to_string());
    let (_, v) = get(&s, "/api/v1/runs?task=shell-lint").await;
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let (_, v) = get(&s, "/api/v1/runs?state=running&q=pkg-").await;
    assert_eq!(v["data"][0]["uuid"], live.to_string());
    let (_, v) = get(&s, "/api/v1/runs?limit=1").await;
    assert!(v["next"].as_str().unwrap().ends_with("limit=1&page=1"));

    let (st, v) = get(&s, &format!("/api/v1/runs/{done}")).await;
    assert_eq!(st, 200);
    assert_eq!(v["state"], "finished");
    assert_eq!(v["phases"][0]["name"], "boot");
    assert_eq!(v["phases"][0]["duration_ms"], 1500.0);
    // A run recorded without a task snapshot says so; there is no link to one.
    assert!(v.get("task_archive").is_none(), "{v}");
    let (st, e) = get(&s, &format!("/api/v1/runs/{done}/task.tar")).await;
    assert_eq!(st, 404, "{e}");
    assert!(message(&e).contains("predates task snapshots"), "{e}");
    assert_eq!(v["params"]["image"], "tiny");
    assert_eq!(
        v["artifacts"],
        json!([{"path": "sub/report.txt", "size": 12, "href": format!("{}/runs/{done}/artifacts/sub/report.txt", s.url)}])
    );
    assert_eq!(
        v["command"],
        "ferrotron run -i pkg-a -t koji_build -a x86_64 --backend libvirt --image tiny --timeout 600 tasks/shell-lint"
    );

    // Cancel: token required, recorded for a live run, refused for a finished one.
    let (st, _) = post(&s, &format!("/api/v1/runs/{live}/cancel"), json!({}), None).await;
    assert_eq!(st, 401);
    assert_eq!(s.store.cancel_requested(live).await.unwrap(), Some(false));
    let (st, v) = post(
        &s,
        &format!("/api/v1/runs/{live}/cancel"),
        json!({}),
        Some(TOKEN),
    )
    .await;
    assert_eq!((st, v["cancel_requested"].as_bool()), (202, Some(true)));
    assert_eq!(s.store.cancel_requested(live).await.unwrap(), Some(true));
    let (st, v) = post(
        &s,
        &format!("/api/v1/runs/{done}/cancel"),
        json!({}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 409, "{v}");
    let (st, _) = post(
        &s,
        &format!("/api/v1/runs/{}/cancel", Uuid::now_v7()),
        json!({}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 404);

    // Files: the artifact (inline text, and as a download), nothing outside the run's dir.
    let r = client()
        .get(format!("{}/runs/{done}/artifacts/sub/report.txt", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "report body\n");
    let r = client()
        .get(format!(
            "{}/runs/{done}/artifacts/sub/report.txt?download=1",
            s.url
        ))
        .send()
        .await
        .unwrap();
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    for bad in [
        format!("/runs/{done}/artifacts/keys/id_ed25519"),
        format!("/runs/{done}/artifacts/..%2F..%2F..%2Fkeys%2Fid_ed25519"),
        format!("/runs/{done}/artifacts/sub/..%2F..%2Fferrotron.log"),
        format!("/runs/{done}/artifacts/%2Fetc%2Fpasswd"),
        "/runs/..%2Fkeys/artifacts/id_ed25519".to_string(),
    ] {
        let r = client()
            .get(format!("{}{bad}", s.url))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 404, "{bad}");
        assert!(!body.contains("PRIVATE KEY"), "{bad}");
    }
    let r = client()
        .get(format!("{}/runs/{done}/log", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "ferrotron: run starts\n[lint] line one\n"
    );

    // Live log: the lines so far, then appended ones, then `end` once the run finishes.
    let mut resp = client()
        .get(format!("{}/runs/{live}/log/stream", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let log = s
        .data
        .path()
        .join(format!("artifacts/{live}/ferrotron.log"));
    let mut seen = String::new();
    let mut appended = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !seen.contains("event: end") {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("stream stalled")
            .unwrap();
        let Some(chunk) = chunk else { break };
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if !appended && seen.contains("data: [lint] line one") {
            appended = true;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            writeln!(f, "[lint] appended while watching").unwrap();
            f.flush().unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            s.store
                .finish_run(live, RunState::Finished, Some(0), None)
                .await
                .unwrap();
        }
    }
    assert!(seen.contains("data: ferrotron: run starts\n"), "{seen}");
    assert!(
        seen.contains("data: [lint] appended while watching\n"),
        "{seen}"
    );
    assert!(seen.contains("event: end\ndata: end\n"), "{seen}");
}

on_both!(live_log_is_bounded);
async fn live_log_is_bounded(s: Server) {
    // One live log at a time on this server (on the same store; the first server, shadowed,
    // keeps a PostgreSQL database alive to the end).
    let s = serve_with(
        s.store.clone(),
        None,
        Limits {
            live_logs: 1,
            ..Limits::default()
        },
    )
    .await;
    let live = make_run(&s, "rpmlint", "pkg-b", RunState::Running).await;
    // A long log: a few read chunks of lines, and one line far over the line cap.
    let log = s
        .data
        .path()
        .join(format!("artifacts/{live}/ferrotron.log"));
    {
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        for i in 0..40_000 {
            writeln!(f, "line {i:06} {}", "x".repeat(80)).unwrap();
        }
        writeln!(f, "{}", "y".repeat(ferrotron::web::files::MAX_LINE * 3)).unwrap();
        writeln!(f, "last line").unwrap();
    }
    let url = format!("{}/runs/{live}/log/stream", s.url);
    let streams = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap();
    let open = || streams.get(&url).send();

    let mut first = open().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    let mut seen: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let last = b"data: last line\n";
    loop {
        let chunk = tokio::time::timeout_at(deadline, first.chunk())
            .await
            .expect("stream stalled")
            .unwrap()
            .expect("stream ended before the last line");
        seen.extend_from_slice(&chunk);
        // Only the new bytes (and a line's worth before them) can complete the last line.
        let from = seen.len().saturating_sub(chunk.len() + last.len());
        if seen[from..].windows(last.len()).any(|w| w == last) {
            break;
        }
    }
    let seen = String::from_utf8(seen).unwrap();
    assert_eq!(seen.matches("data: line ").count(), 40_000);
    let ys: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("data: y"))
        .collect();
    assert_eq!(ys.len(), 3, "the long line comes in MAX_LINE pieces");
    assert!(!seen.contains("event: end"), "the run is still running");

    // A second stream while the first is open: a clear 503.
    let r = open().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert!(message(&v).contains("too many live logs"), "{v}");

    // The first client goes away: its slot is free again soon (the stream notices).
    drop(first);
    let mut third = loop {
        let r = open().await.unwrap();
        if r.status().as_u16() == 200 {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The run ends: the stream sends `end` and stops.
    s.store
        .finish_run(live, RunState::Finished, Some(0), None)
        .await
        .unwrap();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let chunk = tokio::time::timeout_at(deadline, third.chunk())
            .await
            .expect("stream did not stop after the run ended")
            .unwrap();
        let Some(chunk) = chunk else { break };
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        seen.ends_with("event: end\ndata: end\n\n"),
        "{}",
        &seen[seen.len().saturating_sub(200)..]
    );
    // And its slot is free once more.
    let r = open().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

on_both!(pages_render_and_escape);
async fn pages_render_and_escape(s: Server) {
    let uuid = make_run(&s, "<script>x</script>", "pkg-<b>", RunState::Finished).await;
    let base = s.url.clone();
    let html = |path: String| {
        let url = format!("{base}{path}");
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for path in [
        "/".to_string(),
        format!("/runs/{uuid}"),
        "/items/pkg-%3Cb%3E".to_string(),
        "/tasks/%3Cscript%3Ex%3C%2Fscript%3E".to_string(),
    ] {
        let (st, body) = html(path.clone()).await;
        assert_eq!(st, 200, "{path}: {body}");
        assert!(!body.contains("<script>x"), "{path} does not escape");
        assert!(
            body.contains("&lt;script&gt;x") || body.contains("pkg-&lt;b&gt;"),
            "{path}"
        );
    }
    let (_, body) = html(format!("/runs/{uuid}")).await;
    assert!(body.contains("[lint] line one"), "finished log is inlined");
    assert!(body.contains("id=\"timeline\""));
    let (st, body) = html("/?state=sleeping".into()).await;
    assert_eq!(st, 400);
    assert!(body.contains("sleeping"));
    let (st, _) = html(format!("/runs/{}", Uuid::now_v7())).await;
    assert_eq!(st, 404);
    let (st, _) = html("/tasks/never-ran".into()).await;
    assert_eq!(st, 404);
}

on_both!(compare_page_shows_what_differs);
async fn compare_page_shows_what_differs(s: Server) {
    use ferrotron::outcome::Outcome;
    use ferrotron::results::CheckResult;
    let result = |checkname: &str, outcome| CheckResult {
        checkname: checkname.into(),
        item: "pkg-c".into(),
        item_type: "koji_build".into(),
        outcome,
        note: None,
        artifact: None,
        data: Default::default(),
    };
    let good = make_run(&s, "dist.cmp", "pkg-c", RunState::Finished).await;
    s.store
        .store_results(
            good,
            &[
                result("dist.a", Outcome::Passed),
                result("dist.b", Outcome::Passed),
            ],
            None,
        )
        .await
        .unwrap();
    let bad = make_run(&s, "dist.cmp", "pkg-c", RunState::Finished).await;
    s.store
        .store_results(
            bad,
            &[
                result("dist.a", Outcome::Passed),
                result("dist.b", Outcome::Failed),
            ],
            None,
        )
        .await
        .unwrap();
    // The bad run's log differs in one line (and in its uuid, which does not count); it has
    // an artifact the good one lacks.
    let art = |u: Uuid| s.data.path().join("artifacts").join(u.to_string());
    std::fs::write(
        art(bad).join("ferrotron.log"),
        format!("ferrotron: run starts\n[lint] line one\n[lint] broke in {bad}\n"),
    )
    .unwrap();
    std::fs::write(
        art(good).join("ferrotron.log"),
        format!("ferrotron: run starts\n[lint] line one\n[lint] fine in {good}\n"),
    )
    .unwrap();
    std::fs::write(art(bad).join("task/core.dump"), "x").unwrap();
    let page = |q: String| {
        let url = format!("{}/compare?{q}", s.url);
        async move {
            let r = client().get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // Without b: the last passing run of the task on the item.
    let (st, body) = page(format!("a={bad}")).await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&format!("/runs/{good}")), "{body}");
    assert!(
        body.contains("1 of 2 testcases differ in outcome"),
        "{body}"
    );
    assert!(body.contains("- [lint] broke in &lt;uuid&gt;"), "{body}");
    assert!(body.contains("+ [lint] fine in &lt;uuid&gt;"), "{body}");
    assert!(body.contains("2 lines differ"), "{body}");
    assert!(body.contains("A: <a href=\"/runs/"), "{body}");
    assert!(
        body.contains("core.dump") && !body.contains("B: <a"),
        "{body}"
    );
    // The same pair named explicitly; a run against itself has no differences.
    let (st, body) = page(format!("a={bad}&b={good}")).await;
    assert_eq!(st, 200);
    assert!(body.contains("1 of 2 testcases differ"));
    let (_, body) = page(format!("a={good}&b={good}")).await;
    assert!(
        body.contains("0 of 2 testcases differ") && body.contains("0 lines differ"),
        "{body}"
    );
    // Bad input names the parameter; a good run has no other passing run to compare with.
    let (st, body) = page("a=nope".into()).await;
    assert!(
        st == 400 && body.contains("a: `nope` is not a run uuid"),
        "{body}"
    );
    let (st, body) = page(format!("a={bad}&b=zzz")).await;
    assert!(st == 400 && body.contains("b: `zzz`"), "{body}");
    let (st, body) = page(format!("a={good}")).await;
    assert!(
        st == 404 && body.contains("no passing run of dist.cmp on pkg-c"),
        "{body}"
    );
    // The run page links here.
    let r = client()
        .get(format!("{}/runs/{bad}", s.url))
        .send()
        .await
        .unwrap();
    assert!(
        r.text()
            .await
            .unwrap()
            .contains(&format!("/compare?a={bad}"))
    );
}

// --- JUnit XML ---------------------------------------------------------------------------

/// The JUnit document as Python's `xml.etree.ElementTree` reads it: suites' attributes and
/// properties, and per testcase its attributes, properties and verdict element.
async fn parse_junit(python: &str, xml: &str) -> Value {
    let script = r#"
import json, sys
import xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.buffer.read())
props = lambda e: {p.get("name"): p.get("value") for p in e.findall("properties/property")}
out = {"root": root.tag, "attrs": dict(root.attrib), "suites": []}
for s in root.findall("testsuite"):
    cases = []
    for c in s.findall("testcase"):
        case = dict(c.attrib, props=props(c), verdict="pass")
        for tag in ("failure", "error", "skipped"):
            v = c.find(tag)
            if v is not None:
                case.update(verdict=tag, type=v.get("type"), message=v.get("message"), text=v.text)
        out_ = c.find("system-out")
        if out_ is not None:
            case["out"] = out_.text
        cases.append(case)
    out["suites"].append(dict(s.attrib, props=props(s), cases=cases))
json.dump(out, sys.stdout)
"#;
    let mut child = tokio::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt as _;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(xml.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "ElementTree refused the document:\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn get_junit(s: &Server, uuid: Uuid) -> String {
    let r = client()
        .get(format!("{}/api/v1/runs/{uuid}/junit.xml", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/xml; charset=utf-8"
    );
    r.text().await.unwrap()
}

on_both!(runs_api_junit_xml);
async fn runs_api_junit_xml(s: Server) {
    use ferrotron::outcome::Outcome;
    use ferrotron::results::CheckResult;
    let Ok(python) = std::env::var("FERROTRON_TEST_PYTHON") else {
        let _ = writeln!(std::io::stderr(), "SKIPPED: FERROTRON_TEST_PYTHON not set");
        return;
    };
    // No NUL here: PostgreSQL cannot store one in text (the unit tests render NULs).
    let hostile = "bad ]]> <b>&amp; \x01 \x1b[31m \"q\" 'a'\nsecond line";
    let result =
        |checkname: &str, outcome, note: Option<&str>, artifact: Option<&str>| CheckResult {
            checkname: checkname.into(),
            item: "pkg-a".into(),
            item_type: "koji_build".into(),
            outcome,
            note: note.map(str::to_string),
            artifact: artifact.map(str::to_string),
            data: Default::default(),
        };
    let done = make_run(&s, "dist.rpmlint", "pkg-a", RunState::Finished).await;
    s.store
        .store_results(
            done,
            &[
                result("dist.ok", Outcome::Passed, None, None),
                result("dist.info", Outcome::Info, Some("fyi"), None),
                result(
                    "dist.bad",
                    Outcome::Failed,
                    Some(hostile),
                    Some("sub/report.txt"),
                ),
                result("dist.look", Outcome::NeedsInspection, Some("look"), None),
                result("dist.waived", Outcome::Waived, None, None),
                result("dist.crash", Outcome::Crashed, Some("segv"), None),
            ],
            Some("https://farm.example/runs/x/artifacts"),
        )
        .await
        .unwrap();

    let v = parse_junit(&python, &get_junit(&s, done).await).await;
    assert_eq!(v["root"], "testsuites");
    let suites = v["suites"].as_array().unwrap();
    assert_eq!(suites.len(), 1, "{v}");
    let suite = &suites[0];
    assert_eq!(suite["name"], "dist.rpmlint");
    for (k, want) in [
        ("tests", "6"),
        ("failures", "2"),
        ("errors", "1"),
        ("skipped", "1"),
    ] {
        assert_eq!(suite[k], want, "{k}: {suite}");
        assert_eq!(v["attrs"][k], want, "{k} of testsuites");
    }
    assert!(
        suite["time"].as_str().unwrap().parse::<f64>().is_ok(),
        "{suite}"
    );
    assert_eq!(suite["timestamp"].as_str().unwrap().len(), 19, "{suite}");
    assert_eq!(suite["props"]["uuid"], done.to_string());
    assert_eq!(suite["props"]["state"], "finished");
    let cases = suite["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "dist.ok",
            "dist.info",
            "dist.bad",
            "dist.look",
            "dist.waived",
            "dist.crash"
        ]
    );
    let verdicts: Vec<&str> = cases
        .iter()
        .map(|c| c["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(
        verdicts,
        ["pass", "pass", "failure", "failure", "skipped", "error"]
    );
    assert!(cases.iter().all(|c| c["classname"] == "pkg-a"), "{v}");
    assert_eq!(cases[1]["out"], "fyi");
    assert_eq!(cases[1]["props"]["outcome"], "INFO");
    // The hostile note arrives as text (its control characters made visible), not as markup.
    let bad = &cases[2];
    assert_eq!(bad["type"], "FAILED");
    assert_eq!(bad["message"], "bad ]]> <b>&amp; \\x01 \\x1b[31m \"q\" 'a'");
    assert_eq!(
        bad["text"],
        "bad ]]> <b>&amp; \\x01 \\x1b[31m \"q\" 'a'\nsecond line"
    );
    assert_eq!(
        bad["props"]["ref_url"],
        "https://farm.example/runs/x/artifacts/sub/report.txt"
    );
    assert_eq!(cases[5]["type"], "CRASHED");
    assert_eq!(cases[5]["message"], "segv");

    // A run that crashed before reporting: one testcase carrying the run's error.
    let crashed = make_run(&s, "dist.rpmlint", "pkg-b", RunState::Running).await;
    s.store
        .finish_run(
            crashed,
            RunState::Crashed,
            Some(4),
            Some("no machine: <quota> & more"),
        )
        .await
        .unwrap();
    let v = parse_junit(&python, &get_junit(&s, crashed).await).await;
    let suite = &v["suites"][0];
    assert_eq!(
        (&suite["tests"], &suite["errors"]),
        (&json!("1"), &json!("1")),
        "{v}"
    );
    let case = &suite["cases"][0];
    assert_eq!(case["name"], "ferrotron.run");
    assert_eq!(case["verdict"], "error");
    assert_eq!(case["message"], "no machine: <quota> & more");

    // Unknown runs: the API's JSON 404, naming what was asked for.
    let missing = Uuid::now_v7();
    for (path, named) in [
        (
            format!("/api/v1/runs/{missing}/junit.xml"),
            missing.to_string(),
        ),
        (
            "/api/v1/runs/nope/junit.xml".to_string(),
            "nope".to_string(),
        ),
    ] {
        let (st, v) = get(&s, &path).await;
        assert_eq!(st, 404, "{path}");
        assert!(message(&v).contains(&named), "{path}: {v}");
    }
}

// --- the real resultsdb_api client ----------------------------------------------------------

on_both!(resultsdb_api_python_client);
async fn resultsdb_api_python_client(s: Server) {
    let Ok(python) = std::env::var("FERROTRON_TEST_PYTHON") else {
        let _ = writeln!(std::io::stderr(), "SKIPPED: FERROTRON_TEST_PYTHON not set");
        return;
    };
    let script = r#"
import json, os, sys
import resultsdb_api
url = os.environ["URL"] + "/api/v2.0"
api = resultsdb_api.ResultsDBapi(url, auth_token=os.environ["TOKEN"], max_retries=0)
out = {}
g = "0190a4c8-0000-7000-8000-00000000abcd"
for i in range(5):
    r = api.create_result(outcome="PASSED" if i % 2 == 0 else "FAILED", testcase="py.check%d" % (i % 2),
                          groups=[g], note="n%d" % i, item="pkg-%d" % (i % 2), type="koji_build", arch=["x86_64", "noarch"])
    out.setdefault("created", []).append(r["id"])
out["one"] = api.get_result(out["created"][0])
out["by_item"] = api.get_results(item="pkg-0")
out["failed"] = api.get_results(outcome="FAILED", testcases_like="py.*")
p0 = api.get_results(limit=2, type="koji_build")
out["p0"] = p0
p1 = api.session.get(p0["next"]).json()
out["p1"] = p1
out["latest"] = api.session.get(url + "/results/latest", params={"item": "pkg-0", "_distinct_on": "arch"}).json()
out["group"] = api.get_group(g)
out["testcase"] = api.get_testcase("py.check1")
out["testcases"] = api.get_testcases(name_like="py.*")
out["group_updated"] = api.update_group(g, description="updated by python")
# Fedora CI's testcase names contain "/": get_testcase() puts the name in the path as it is.
slash = "fedora-ci.koji-build./plans/basic.functional"
api.create_result(outcome="PASSED", testcase=slash, item="pkg-0", note="slash")
out["slash"] = api.get_testcase(slash)
# resultsdb_api 2.1 has no get_testcase_results(): the path ResultsDB documents, built the
# same way, through the client's session (which raises on an error status).
out["slash_results"] = api.session.get("%s/testcases/%s/results" % (url, slash)).json()
try:
    api.get_result(987654)
except resultsdb_api.ResultsDBapiException as e:
    out["missing"] = [e.message, e.response.status_code]
try:
    api.get_results(since="notadate")
except resultsdb_api.ResultsDBapiException as e:
    out["bad_since"] = [e.message, e.response.status_code]
anon = resultsdb_api.ResultsDBapi(url, max_retries=0)
try:
    anon.create_result(outcome="PASSED", testcase="py.anon", item="x")
except resultsdb_api.ResultsDBapiException as e:
    out["anon"] = [e.message, e.response.status_code]
basic = resultsdb_api.ResultsDBapi(url, request_auth=resultsdb_api.ResultsDBAuth.basic_auth("me", os.environ["TOKEN"]), max_retries=0)
out["basic"] = basic.create_result(outcome="INFO", testcase="py.basic", item="pkg-9")
json.dump(out, sys.stdout)
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script])
        .env("URL", &s.url)
        .env("TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let len = |k: &str| v[k]["data"].as_array().unwrap().len();

    assert_eq!(v["created"].as_array().unwrap().len(), 5);
    assert_eq!(v["one"]["testcase"]["name"], "py.check0");
    assert_eq!(v["one"]["data"]["arch"], json!(["x86_64", "noarch"]));
    assert_eq!(
        v["one"]["groups"],
        json!(["0190a4c8-0000-7000-8000-00000000abcd"])
    );
    assert_eq!(len("by_item"), 3);
    assert_eq!(len("failed"), 2);
    assert_eq!(len("p0"), 2);
    assert_eq!(len("p1"), 2);
    assert_ne!(v["p0"]["data"][0]["id"], v["p1"]["data"][0]["id"]);
    assert!(v["p1"]["prev"].as_str().unwrap().ends_with("page=0"));
    // pkg-0: n0 (check0), n2 (check0), n4 (check0): one testcase, one arch list → one row.
    assert_eq!(len("latest"), 1);
    assert_eq!(v["latest"]["data"][0]["note"], "n4");
    assert_eq!(v["group"]["results_count"], 5);
    assert_eq!(v["testcase"]["name"], "py.check1");
    assert_eq!(len("testcases"), 2);
    assert_eq!(v["group_updated"]["description"], "updated by python");
    assert_eq!(v["missing"], json!(["Result not found (HTTP 404)", 404]));
    assert_eq!(v["bad_since"][1], 400);
    assert!(v["bad_since"][0].as_str().unwrap().contains("since"));
    assert_eq!(v["anon"][1], 401);
    assert_eq!(v["basic"]["outcome"], "INFO");
    assert_eq!(v["slash"]["name"], SLASH_NAME);
    assert_eq!(notes(&v["slash_results"]), ["slash"]);
    // 5 + slash + basic; the anonymous one was not stored.
    assert_eq!(count_results(&s).await, 7);
}

// --- the real binary ------------------------------------------------------------------------

/// `ferrotron web` serves an existing store read-only: pages and GETs work, writes get 403
/// and store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_command_is_read_only() {
    let data = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/ferrotron.db", data.path().display());
    let store = Store::open(&db).await.unwrap();
    store
        .create_result(&ferrotron::store::NewResult {
            testcase: "t".into(),
            outcome: "PASSED".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let web = common::WebProcess::start(data.path(), &[]);
    let url = web.url.clone();
    let s = Server {
        url,
        store: store.clone(),
        data,
        _pg: None,
    };
    let (st, v) = get(&s, "/api/v2.0/results").await;
    assert_eq!((st, v["data"].as_array().unwrap().len()), (200, 1));
    let (st, v) = post(
        &s,
        "/api/v2.0/results",
        json!({"outcome": "PASSED", "testcase": "t"}),
        Some(TOKEN),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    assert!(message(&v).contains("read-only"));
    assert_eq!(count_results(&s).await, 1);
    let r = client().get(format!("{}/", s.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Without --trust-forwarded, a client's X-Forwarded-Host does not make the links.
    let href = |base: &str, forwarded: bool| {
        let url = format!("{base}/api/v2.0/results");
        async move {
            let mut req = client().get(url);
            if forwarded {
                req = req
                    .header("X-Forwarded-Host", "evil.example")
                    .header("X-Forwarded-Proto", "https");
            }
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            v["data"][0]["href"].as_str().unwrap().to_string()
        }
    };
    let h = href(&s.url, true).await;
    assert!(
        h.starts_with(&format!("{}/api/v2.0/results/", s.url)),
        "{h}"
    );
    drop(web);

    // With --public-url, every link is under it, whatever the request says.
    let web = common::WebProcess::start(
        s.data.path(),
        &["--public-url", "https://results.example.org/rdb/"],
    );
    let h = href(&web.url, true).await;
    assert!(
        h.starts_with("https://results.example.org/rdb/api/v2.0/results/"),
        "{h}"
    );
    drop(web);
    // Behind a proxy that is trusted, its headers make the links.
    let web = common::WebProcess::start(s.data.path(), &["--trust-forwarded"]);
    let h = href(&web.url, true).await;
    assert!(
        h.starts_with("https://evil.example/api/v2.0/results/"),
        "{h}"
    );
    drop(web);
    // A public URL that cannot be a base is refused, naming the flag.
    let out = common::ferrotron(s.data.path(), &["web", "--public-url", "ftp://x/?a"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--public-url ftp://x/?a: must start with http"),
        "{err}"
    );
}
