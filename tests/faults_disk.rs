//! Disk pressure: a small outbox with the broker away, a disk that fills
//! up, and a state directory the agent cannot use.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, Mode, Platform, Proxy};
use zgsz_agent::buffer::{
    encode_readings, Batch, BufferError, Kind, NewRow, Outbox, Publish, DISK_FULL_HOLD_MS,
};
use zgsz_agent::clock::SystemClock;
use zgsz_agent::reading::{Quality, Reading, Value};
use zgsz_agent::sim::{Bank, SimDevice};

fn reading(i: i64) -> Reading {
    Reading {
        device: "d".into(),
        tag: "t".into(),
        value: Some(Value::Int(i)),
        quality: Quality::Good,
        ts: i,
    }
}

fn metrics_row() -> NewRow {
    NewRow::new(Kind::Metrics, 1, br#""window":{"kind":"hour"}"#.to_vec())
}

/// Eviction order and exact counters, on the outbox itself.
#[test]
fn eviction_takes_oldest_telemetry_first_and_counts_every_reading() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, "", "", "max_bytes = \"1MiB\"");
    let mut o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    let mut appended = 0u64;
    let mut metrics = 0u64;
    // Stored compactly, a reading takes about 5 bytes: 400,000 overflow 1 MiB.
    for round in 0..400 {
        let readings: Vec<Reading> = (0..1000).map(|i| reading(round * 1000 + i)).collect();
        let mut rows = encode_readings(&readings, 4096);
        if round % 20 == 0 {
            rows.push(metrics_row());
            metrics += 1;
        }
        appended += 1000;
        o.commit(&rows, &Batch::default(), &[], &[], round).unwrap();
    }
    let s = o.stats().unwrap();
    assert!(s.evicted_rows > 0, "1 MiB must overflow");
    assert!(s.bytes <= 1 << 20);
    assert_eq!(s.evicted_metrics, 0, "metrics outlive telemetry");
    // Every reading is either still in the outbox or counted as evicted.
    let conn = zgsz_agent::buffer::open_read_only(dir.path()).unwrap();
    let (pending_readings, pending_metrics, oldest_telemetry): (i64, i64, i64) = conn
        .query_row(
            "SELECT coalesce(sum(CASE WHEN kind = 3 THEN count END), 0), count(CASE WHEN kind = 1 THEN 1 END), min(CASE WHEN kind = 3 THEN seq END) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(pending_readings as u64 + s.evicted_readings, appended);
    assert_eq!(pending_metrics as u64, metrics);
    // Eviction went strictly oldest first: every telemetry row newer than
    // the oldest survivor is still there.
    let (max_seq, telemetry_after, metrics_after): (i64, i64, i64) = conn
        .query_row(
            "SELECT max(seq), count(CASE WHEN kind = 3 THEN 1 END), count(CASE WHEN kind = 1 AND seq > ?1 THEN 1 END) FROM outbox WHERE seq >= ?1",
            [oldest_telemetry],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        telemetry_after,
        max_seq - oldest_telemetry + 1 - metrics_after
    );
}

/// SQLite reporting a full disk (SQLITE_FULL, made real with a small
/// max_page_count): the commit fails with the disk-full kind, room is made
/// by counted eviction, the commit succeeds, and `status` shows the full
/// disk until it is 10 minutes old.
#[test]
fn a_full_disk_is_reported_and_survived() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, "", "", "");
    let mut o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    let pages: i64 = zgsz_agent::buffer::open_read_only(dir.path())
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    o.set_max_pages(pages as u64 + 40).unwrap();
    let mut err = None;
    for round in 0..1000 {
        let rows = encode_readings(&(0..50).map(reading).collect::<Vec<_>>(), 4096);
        if let Err(e) = o.commit(&rows, &Batch::default(), &[], &[], round) {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("the capped database fills up");
    assert!(
        matches!(err, BufferError::DiskFull { .. }),
        "reported as a full disk: {err:?}"
    );
    assert!(o.stats().unwrap().disk_full_ts.is_none());
    o.evict_for_space(64, 2_000).unwrap();
    let rows = encode_readings(&(0..50).map(reading).collect::<Vec<_>>(), 4096);
    o.commit(&rows, &Batch::default(), &[], &[], 3_000)
        .expect("room was made");
    let s = o.stats().unwrap();
    assert!(s.evicted_rows >= 1 && s.evicted_readings >= 1);
    assert!(
        s.disk_full,
        "a commit right after does not hide the full disk"
    );
    assert_eq!(s.disk_full_ts, Some(2_000));
    o.commit(&[], &Batch::default(), &[], &[], 2_000 + DISK_FULL_HOLD_MS)
        .unwrap();
    let s = o.stats().unwrap();
    assert!(
        !s.disk_full,
        "cleared once the last failure is 10 minutes old"
    );
    assert_eq!(s.disk_full_ts, Some(2_000), "when it last happened stays");
}

/// The outbox thread on a disk that fills up: the agent's own commit loop
/// hits SQLITE_FULL, evicts and carries on, and the full disk reaches the
/// outbox client's status, the stored figures and `zgsz-agent status`.
#[tokio::test]
async fn a_full_disk_reaches_status() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, "", "", "");
    let outbox = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    let pages: i64 = zgsz_agent::buffer::open_read_only(dir.path())
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    outbox.set_max_pages(pages as u64 + 40).unwrap();
    let h = zgsz_agent::buffer::spawn(outbox, &cfg.buffer, Arc::new(SystemClock));
    let mut full = None;
    for round in 0..2_000 {
        let batch = Batch {
            readings: (0..50).map(|i| reading(round * 50 + i)).collect(),
            publish: Publish::All,
            ..Default::default()
        };
        h.readings.send(batch).await.unwrap();
        if round % 20 == 19 {
            let s = h.client.stats().await.unwrap();
            if s.disk_full {
                full = Some(s);
                break;
            }
        }
    }
    let s = full.expect("the capped outbox fills the disk and status says so");
    assert!(s.disk_full_ts.is_some());
    assert!(s.evicted_readings > 0, "room was made by counted eviction");
    let appended = s.appended_readings;
    // Still taking readings.
    h.readings
        .send(Batch {
            readings: vec![reading(0)],
            publish: Publish::All,
            ..Default::default()
        })
        .await
        .unwrap();
    common::wait_for_stats(&h.client, Duration::from_secs(20), "the next commit", |s| {
        s.appended_readings > appended
    })
    .await;
    drop(h.readings);
    h.client.close().await;
    tokio::task::spawn_blocking(move || h.thread.join().unwrap())
        .await
        .unwrap();

    // Offline, as `zgsz-agent status` reads it.
    let s = zgsz_agent::buffer::read_stats(dir.path()).unwrap();
    assert!(s.disk_full && s.disk_full_ts.is_some(), "{s:?}");
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "[agent]\ngateway_id = \"gw\"\nstate_dir = \"{}\"\n[enterprise]\nname = \"测试\"\nuscc = \"{}\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\ntls = false\n",
            dir.path().display(),
            common::USCC
        ),
    )
    .unwrap();
    let status = |json: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_zgsz-agent"));
        cmd.args(["status", "--config"]).arg(&file);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let text = status(false);
    let line = text
        .lines()
        .find(|l| l.starts_with("disk full"))
        .unwrap_or_else(|| panic!("no disk full line in:\n{text}"));
    assert!(line.contains("YES"), "{line}");
    assert!(line.contains(&dir.path().display().to_string()), "{line}");
    let v: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    assert_eq!(v["disk_full"], true);
    assert!(v["disk_full_ts"].is_i64());
}

/// The whole agent with a 1 MiB outbox and no broker: it keeps polling,
/// evicts telemetry (never metrics), and when the broker returns the
/// platform receives exactly what was not evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_outbox_with_broker_down_keeps_polling_and_counts_evictions() {
    let mut bank = Bank::new(130);
    for i in 0..120 {
        bank.holding[i] = i as u16;
    }
    let sim = SimDevice::start(HashMap::from([(1u8, Arc::new(Mutex::new(bank)))]))
        .await
        .unwrap();
    let mut tags = String::new();
    for i in 0..120 {
        tags += &format!(
            "[[devices.tags]]\nname = \"r{i}\"\narea = \"holding_register\"\naddress = {i}\n"
        );
    }
    let port = zgsz_agent::broker::free_port().unwrap();
    zgsz_agent::broker::start_embedded(port).unwrap();
    let platform = Platform::subscribe(port).await;
    let proxy = Proxy::start(([127, 0, 0, 1], port).into(), Mode::Refuse).await;
    let dir = tempfile::tempdir().unwrap();
    let devices = format!(
        "[[devices]]\nid = \"plc-1\"\naddress = \"{}\"\npoll_interval = \"10ms\"\n{tags}",
        sim.addr
    );
    let cfg = config(dir.path(), proxy.port, &devices, "", "max_bytes = \"1MiB\"");
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let buffer = agent.buffer.clone();
    let evicting = common::wait_for_stats(
        &buffer,
        Duration::from_secs(60),
        "the 1 MiB outbox to overflow",
        |s| s.evicted_rows > 0,
    )
    .await;
    // Still polling after eviction started.
    let later = common::wait_for_stats(&buffer, Duration::from_secs(60), "more polling", |s| {
        s.appended_readings > evicting.appended_readings + 1200
    })
    .await;
    assert!(
        later.evicted_readings > evicting.evicted_readings,
        "eviction continues while polling does"
    );
    assert_eq!(later.evicted_metrics, 0);

    agent.stop().await;

    // The broker returns; an agent with no devices drains the outbox.
    proxy.set(Mode::Forward);
    let drain_cfg = config(dir.path(), proxy.port, "", "", "max_bytes = \"1MiB\"");
    let drain = zgsz_agent::agent::start(&drain_cfg, Arc::new(SystemClock)).unwrap();
    let last_seq = drain.buffer.stats().await.unwrap().last_seq;
    platform
        .wait_for(Duration::from_secs(60), "the surviving backlog", |p| {
            p.telemetry_by_seq()
                .keys()
                .last()
                .is_some_and(|&s| s >= last_seq)
        })
        .await;
    let buffer = drain.buffer.clone();
    common::wait_for_stats(&buffer, Duration::from_secs(30), "every row acked", |s| {
        s.rows == 0
    })
    .await;
    drain.stop().await;
    let s = zgsz_agent::buffer::read_stats(dir.path()).unwrap();
    let delivered: u64 = platform
        .telemetry_by_seq()
        .values()
        .map(|m| common::readings(m).len() as u64)
        .sum();
    // Exact: every reading appended was either delivered or counted evicted.
    assert_eq!(delivered + s.evicted_readings, s.appended_readings);
    let pending = 0;
    eprintln!(
        "MEASURED: appended {} readings, evicted {}, delivered {delivered}, pending {pending}",
        s.appended_readings, s.evicted_readings
    );
}

/// A state directory that cannot exist: `run` says so and exits non-zero
/// at once, rather than crash-looping silently.
#[test]
fn an_unusable_state_dir_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "[agent]\ngateway_id = \"gw\"\nstate_dir = \"/proc/zgsz-agent-cannot-live-here\"\n[enterprise]\nname = \"测试\"\nuscc = \"{}\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\ntls = false\n",
            common::USCC
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zgsz-agent"))
        .args(["run", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot open the outbox in /proc/zgsz-agent-cannot-live-here"),
        "{stderr}"
    );
    assert!(stderr.contains("agent.state_dir"), "{stderr}");
}

/// Evidence older than the retention period is pruned, keeping the state
/// each equipment was in when what remains begins.
#[test]
fn old_evidence_is_pruned_but_the_starting_state_is_kept() {
    use zgsz_agent::plant::{Sample, State, Transition};
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, "", "", "");
    {
        let mut o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
        let t = |ts, state| Transition {
            equipment: "e1".into(),
            ts,
            state,
        };
        let batch = Batch {
            transitions: vec![t(0, State::Idle), t(1_000, State::RunningNc)],
            samples: vec![Sample {
                equipment: "e1".into(),
                minute: 0,
                good: true,
            }],
            ..Default::default()
        };
        o.commit(&[], &batch, &[], &[], 2_000).unwrap();
    }
    let mut o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    o.commit(
        &[],
        &Batch::default(),
        &[],
        &[],
        zgsz_agent::buffer::RETENTION_MS + 5_000,
    )
    .unwrap();
    let conn = zgsz_agent::buffer::open_read_only(dir.path()).unwrap();
    let samples: i64 = conn
        .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
        .unwrap();
    assert_eq!(samples, 0);
    let left: Vec<(i64, String)> = conn
        .prepare("SELECT ts, state FROM transitions ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(left, vec![(1_000, "running_nc".to_string())]);
}

/// Telemetry rows name their devices and tags in the outbox's dictionary,
/// written in the same transaction: after a restart (a new process, a new
/// dictionary read from disk) every row still reads back with its names,
/// and a name is stored once however many rows use it.
#[test]
fn telemetry_names_survive_a_restart_and_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 1, "", "", "");
    let batch = |round: i64, tag: &str| Batch {
        readings: (0..20)
            .map(|i| Reading {
                device: format!("press-{}", i % 4).as_str().into(),
                tag: format!("{tag}_{}", i / 4).as_str().into(),
                value: Some(Value::Int(round * 100 + i)),
                quality: Quality::Good,
                ts: round,
            })
            .collect(),
        publish: zgsz_agent::buffer::Publish::All,
        ..Default::default()
    };
    let mut o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    for round in 0..10 {
        let rows = o.encode_telemetry(&[batch(round, "spindle_speed")], 60_000);
        o.commit(&rows, &Batch::default(), &[], &[], round).unwrap();
    }
    drop(o);
    let mut o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    // A name new to the reopened outbox gets the next id.
    let rows = o.encode_telemetry(&[batch(10, "feed_rate")], 60_000);
    o.commit(&rows, &Batch::default(), &[], &[], 10).unwrap();
    drop(o);
    let o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    let bit = o.sink_bit("platform").unwrap();
    let leased = o.lease(bit, 0, 100).unwrap();
    assert_eq!(leased.len(), 11);
    let sel = zgsz_agent::buffer::cycle::Selection {
        keys: zgsz_agent::buffer::cycle::TagKeys::Name,
        ..Default::default()
    };
    for (round, row) in leased.iter().enumerate() {
        let mut out = b"{".to_vec();
        let n = zgsz_agent::buffer::cycle::write_json(&row.body, &row.names, &sel, &mut out);
        assert_eq!(n, Ok(20), "row {round}");
        out.push(b'}');
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let tag = if round < 10 {
            "spindle_speed"
        } else {
            "feed_rate"
        };
        assert_eq!(v["cycles"][1]["device"], "press-1");
        assert_eq!(
            v["cycles"][1]["values"][format!("{tag}_0")],
            round as i64 * 100 + 1,
            "row {round}: {v}"
        );
    }
    let conn = zgsz_agent::buffer::open_read_only(dir.path()).unwrap();
    let (names, distinct): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT name) FROM names",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // 4 devices, 5 spindle_speed_* and 5 feed_rate_* tags.
    assert_eq!((names, distinct), (14, 14));
}
