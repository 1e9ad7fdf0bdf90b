//! `POST /v1/jobs/{id}/steps` over HTTP: the answers (recorded, memoized), the refusals (stale
//! lease and finished job as an ack gets them, bad input naming the field and the limit), the
//! steps on the next lease as an object in recording order, and the job view's steps and timeline.

mod common;

use common::{enqueue, get, lease, post, start, state};
use serde_json::{Value, json};

fn steps_path(id: u64) -> String {
    format!("/v1/jobs/{id}/steps")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_are_recorded_memoized_and_handed_to_the_next_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let id = enqueue(addr, "agents", json!({"goal": "write a report"})).await;
    let first = lease(addr, "agents", 1).await.remove(0);
    assert!(first.get("steps").is_none(), "no steps: the field is omitted ({first})");
    let lease_id = first["lease_id"].as_str().unwrap().to_owned();

    let body = |name: &str, result: Value| json!({ "lease_id": lease_id, "name": name, "result": result });
    let recorded = post(addr, &steps_path(id), body("plan", json!({"steps": ["search", "write"]}))).await.expect(200);
    assert_eq!(recorded.value(), json!({"name": "plan", "result": {"steps": ["search", "write"]}, "recorded": true}));
    post(addr, &steps_path(id), body("search", json!(["a", "b"]))).await.expect(200);
    // A retry of a lost reply, with whatever result: the first record wins.
    let again = post(addr, &steps_path(id), body("plan", json!("other"))).await.expect(200);
    assert_eq!(again.value(), json!({"name": "plan", "result": {"steps": ["search", "write"]}, "recorded": false}));

    let fail = json!({ "lease_id": lease_id, "error": "crashed at write", "retry_after_ms": 0 });
    post(addr, &format!("/v1/jobs/{id}/fail"), fail).await.expect(200);
    let second = lease(addr, "agents", 1).await.remove(0);
    assert_eq!(second["attempt"], 2);
    // An object in recording order (not sorted by name).
    let steps = second["steps"].as_object().expect("steps is an object");
    assert_eq!(steps.keys().collect::<Vec<_>>(), ["plan", "search"]);
    assert_eq!(second["steps"], json!({"plan": {"steps": ["search", "write"]}, "search": ["a", "b"]}));
    let lease2 = second["lease_id"].as_str().unwrap().to_owned();
    let write = json!({ "lease_id": lease2, "name": "write", "result": "the report" });
    post(addr, &steps_path(id), write).await.expect(200);

    let job = get(addr, &format!("/v1/jobs/{id}")).await.expect(200).value();
    let steps: Vec<(Value, Value, Value)> = job["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            assert!(s["recorded_at"].as_str().is_some_and(|t| t.ends_with('Z')), "{s}");
            (s["name"].clone(), s["result"].clone(), s["attempt"].clone())
        })
        .collect();
    assert_eq!(
        steps,
        [
            (json!("plan"), json!({"steps": ["search", "write"]}), json!(1)),
            (json!("search"), json!(["a", "b"]), json!(1)),
            (json!("write"), json!("the report"), json!(2)),
        ]
    );
    let timeline: Vec<(Value, Value)> = job["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "step_recorded")
        .map(|e| {
            assert!(e.get("error").is_none(), "a step entry has no error: {e}");
            (e["step"].clone(), e["attempt"].clone())
        })
        .collect();
    assert_eq!(timeline, [(json!("plan"), json!(1)), (json!("search"), json!(1)), (json!("write"), json!(2))]);

    post(addr, &format!("/v1/jobs/{id}/complete"), json!({ "lease_id": lease2 })).await.expect(200);
    let late = json!({ "lease_id": lease2, "name": "after", "result": 1 });
    let p = post(addr, &steps_path(id), late).await.expect(409).problem();
    assert_eq!((p.kind.as_str(), p.job), ("urn:dray:problem:already-finished", Some(id)));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_steps_and_stale_leases_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.addr;
    let id = enqueue(addr, "q", json!(1)).await;
    let held = lease(addr, "q", 1).await.remove(0)["lease_id"].as_str().unwrap().to_owned();
    let stale = if held == "0000000000000001" { "0000000000000002" } else { "0000000000000001" };
    let before = state(addr).await;

    let p =
        post(addr, &steps_path(id), json!({ "lease_id": stale, "name": "s", "result": 1 })).await.expect(409).problem();
    assert_eq!((p.kind.as_str(), p.job), ("urn:dray:problem:stale-lease", Some(id)), "as an ack gets it");
    let p = post(addr, &steps_path(id + 100), json!({ "lease_id": held, "name": "s", "result": 1 })).await;
    assert_eq!(p.expect(404).problem().kind, "urn:dray:problem:job-not-found");

    let big = "x".repeat(256 * 1024);
    let cases = [
        (json!({ "lease_id": held, "name": "", "result": 1 }), "name", "must not be empty"),
        (json!({ "lease_id": held, "name": "n".repeat(257), "result": 1 }), "name", "the limit is 256"),
        (json!({ "lease_id": held, "name": "a\u{1}b", "result": 1 }), "name", "control character"),
        (json!({ "lease_id": held, "name": "s", "result": big }), "result", "the limit is 262144"),
        (json!({ "lease_id": held, "name": "s" }), "result", "missing"),
        (json!({ "lease_id": "nope", "name": "s", "result": 1 }), "lease_id", "16 hex digits"),
    ];
    for (body, field, says) in cases {
        let p = post(addr, &steps_path(id), body).await.expect(422).problem();
        assert_eq!(p.field.as_deref(), Some(field), "{p:?}");
        assert!(p.detail.contains(says), "{p:?} should say {says:?}");
    }
    let raw = format!(r#"{{"lease_id":"{held}","name":"s","result":1e400}}"#);
    let reply = common::request(addr, "POST", &steps_path(id), &[], raw.as_bytes()).await.expect(422);
    assert_eq!(reply.problem().field.as_deref(), Some("result"));
    assert_eq!(state(addr).await, before, "refused steps change nothing");
    server.shutdown().await.unwrap();
}
