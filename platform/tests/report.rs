//! Evidence-report intake against a stored chain, on SQLite and on
//! PostgreSQL: the library call and the `verify-report` command. The
//! stream is the hand-sealed one of the ingest tests, fed through
//! `ingest::handle`; the report lists its seals and is signed with a
//! throw-away key enrolled for the gateway. (The real agent's report over
//! HTTP is tested in the agent's package, tests/report_intake.rs.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::process::Command;

use common::{chain, new_database, Fixture, Which, GW, REGION, USCC};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use zgsz_contract::chain::{entry_digest, hex};
use zgsz_platform::config::Backend;
use zgsz_platform::report::{intake, Verdict};
use zgsz_platform::store::{Gateway, Store};

on_both_backends!(
    a_report_is_compared_with_the_chain_received,
    verify_report_prints_the_verdict_and_exits_by_it,
);

fn key() -> SigningKey {
    SigningKey::from_bytes(&[42; 32])
}

/// A store with [`GW`] enrolled under [`key`], and the receiver's config.
async fn fixture(which: Which) -> Option<Fixture> {
    let (backend, place) = new_database(which)?;
    Store::open(&backend)
        .await
        .unwrap()
        .enrol(&Gateway {
            gateway_id: GW.into(),
            uscc: USCC.into(),
            region_code: REGION.into(),
            public_key: hex(key().verifying_key().as_bytes()),
        })
        .await
        .unwrap();
    Some(Fixture::on(backend, place, "t").await)
}

/// Four sealed hours; the receiver gets the first three. Returns the
/// report of all four.
async fn received_three_of_four(f: &mut Fixture) -> Value {
    let stream = chain(4);
    let mut entries = Vec::new();
    for (i, (name, payload)) in stream.iter().enumerate() {
        if i < 6 {
            f.put(name, payload).await;
        }
        if *name == "metrics" {
            let m: Value = serde_json::from_str(payload).unwrap();
            let s = &m["seal"];
            entries.push(json!({
                "kind": m["window"]["kind"], "start_ts": m["window"]["start_ts"],
                "end_ts": m["window"]["end_ts"], "config_hash": m["config_hash"],
                "index": s["index"], "prev": s["prev"], "digest": s["digest"],
                "metrics_sha256": s["metrics_sha256"],
                "transitions_sha256": s["transitions_sha256"],
            }));
        }
    }
    json!({
        "schema": "zgsz.report/1",
        "enterprise": { "uscc": USCC, "region_code": REGION },
        "gateway": { "id": GW, "public_key": hex(key().verifying_key().as_bytes()) },
        "period": { "from": "2027-01-15", "to": "2027-01-15" },
        "days": [],
        "chain": { "entries": entries },
    })
}

fn signed(v: &Value) -> (Vec<u8>, Vec<u8>) {
    let json = serde_json::to_vec_pretty(v).unwrap();
    let sig = key().sign(&json).to_bytes().to_vec();
    (json, sig)
}

/// The report's second hour with other figures, sealed again from there.
fn resealed(mut v: Value) -> Value {
    let entries = v["chain"]["entries"].as_array_mut().unwrap();
    entries[1]["metrics_sha256"] = json!("0".repeat(64));
    for i in 1..entries.len() {
        entries[i]["prev"] = entries[i - 1]["digest"].clone();
        let e = &entries[i];
        let d = entry_digest(
            e["index"].as_u64().unwrap(),
            e["prev"].as_str().unwrap(),
            e["metrics_sha256"].as_str().unwrap(),
            e["transitions_sha256"].as_str().unwrap(),
        );
        entries[i]["digest"] = json!(d);
    }
    v
}

async fn a_report_is_compared_with_the_chain_received(which: Which) {
    let Some(mut f) = fixture(which).await else {
        return;
    };
    let report = received_three_of_four(&mut f).await;
    let (json, sig) = signed(&report);
    let i = intake(&mut f.store, &json, &sig).await.unwrap();
    assert_eq!(i.verdict, Verdict::Accepted, "{}", i.summary());
    let c = i.counts;
    assert_eq!(
        (c.entries, c.matched, c.not_received, c.mismatched),
        (4, 3, 1, 0)
    );

    let (json, sig) = signed(&resealed(report));
    let i = intake(&mut f.store, &json, &sig).await.unwrap();
    assert_eq!(i.verdict, Verdict::Refused);
    let codes: Vec<&str> = i.reasons.iter().map(|r| r.code).collect();
    assert_eq!(codes, ["rewritten", "rewritten"], "{}", i.summary());
    let c = i.counts;
    assert_eq!((c.matched, c.not_received, c.mismatched), (1, 1, 2));

    let rows = f.store.reports().await.unwrap();
    let verdicts: Vec<&str> = rows.iter().map(|r| r.verdict.as_str()).collect();
    assert_eq!(verdicts, ["refused", "accepted"], "newest first");
    assert_eq!((rows[1].matched, rows[1].not_received), (3, 1));
    assert!(rows[0].reasons.contains("\"code\":\"rewritten\""));
    // A second connection (another instance starting) applies no
    // migration again.
    assert_eq!(
        Store::open(&f.backend)
            .await
            .unwrap()
            .schema_version()
            .await
            .unwrap(),
        zgsz_platform::store::SCHEMA_VERSION
    );
}

async fn verify_report_prints_the_verdict_and_exits_by_it(which: Which) {
    let Some(mut f) = fixture(which).await else {
        return;
    };
    let report = received_three_of_four(&mut f).await;
    let dir = tempfile::tempdir().unwrap();
    let database = match &f.backend {
        Backend::Sqlite { path } => format!("path = \"{}\"", path.display()),
        Backend::Postgres { url } => format!("url = \"{url}\""),
    };
    let config = dir.path().join("platform.toml");
    std::fs::write(
        &config,
        format!("[database]\n{database}\n[mqtt]\nhost = \"127.0.0.1\"\nclient_id = \"cli\"\n"),
    )
    .unwrap();
    let (json, sig) = signed(&report);
    std::fs::write(dir.path().join("report.json"), &json).unwrap();
    std::fs::write(dir.path().join("report.json.sig"), &sig).unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_zgsz-platform"))
            .arg("verify-report")
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = run(&[dir.path().as_os_str()]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with("ACCEPTED: gateway gw-1, 2027-01-15 to 2027-01-15"),
        "{out}"
    );
    assert!(
        out.contains("4 chain entries: 3 matched, 1 not received, 0 mismatched"),
        "{out}"
    );

    // One byte edited, named with --report and --signature.
    let edited = dir.path().join("edited.json");
    let mut bytes = json.clone();
    let at = bytes.iter().position(|b| *b == b'4').unwrap();
    bytes[at] = b'5';
    std::fs::write(&edited, &bytes).unwrap();
    let (code, out, err) = run(&[
        "--report".as_ref(),
        edited.as_os_str(),
        "--signature".as_ref(),
        dir.path().join("report.json.sig").as_os_str(),
    ]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.starts_with("REFUSED:"), "{out}");
    assert!(
        out.contains("REFUSED: signature against the registered key of gateway gw-1: the signature does not match"),
        "{out}"
    );

    // Neither DIR nor the two files: a usage error, nothing recorded.
    let (code, _, err) = run(&["--report".as_ref(), edited.as_os_str()]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(f.store.reports().await.unwrap().len(), 2);
}
