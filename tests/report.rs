//! The evidence report: built from a sealed SQLite history, verified, and
//! tampered with in every way `verify` must catch; the digest chain as the
//! live scheduler writes it under a time-compressed clock; the demo plant's
//! report opened in headless Chromium.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use zgsz_agent::buffer::{self, Batch, Outbox};
use zgsz_agent::config::{self, Config};
use zgsz_agent::metrics::{seal_window, Window, WindowKind};
use zgsz_agent::plant::{Sample, State, Transition};
use zgsz_agent::report::{self, verify::verify_dir};
use zgsz_agent::signing::GatewayKey;

const H: i64 = 3_600_000;
const MIN: i64 = 60_000;

fn plant_config(state: &Path) -> Config {
    match config::load_str(Path::new("report-test.toml"), &plant_text(state)) {
        Ok((c, _)) => c,
        Err(e) => panic!("{e}"),
    }
}

fn plant_text(state: &Path) -> String {
    let mut text = format!(
        "[agent]\ngateway_id = \"gw-report\"\nstate_dir = {:?}\n[enterprise]\nname = \"扬州测试机械有限公司\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"discrete\"\nchain = \"高端装备\"\n[metrics]\nutc_offset = \"+08:00\"\n[mqtt]\ntls = false\n",
        state.display().to_string()
    );
    for d in 1..=3 {
        text += &format!("[[devices]]\nid = \"d{d}\"\naddress = \"127.0.0.1:1502\"\n[[devices.tags]]\nname = \"controller_mode\"\narea = \"holding_register\"\naddress = 0\n[[devices.tags]]\nname = \"execution\"\narea = \"holding_register\"\naddress = 1\n");
    }
    text += "[[processes]]\nid = \"turning\"\nname = \"数控车削\"\nkey = true\n[[processes]]\nid = \"packing\"\nname = \"包装\"\nkey = false\n";
    for (id, process, kind, dev) in [
        ("e1", "turning", "cnc", "d1"),
        ("e2", "turning", "manual", "d2"),
        ("e3", "packing", "cnc", "d3"),
    ] {
        text += &format!("[[equipment]]\nid = \"{id}\"\nname = \"设备 {id}\"\nprocess = \"{process}\"\nkind = \"{kind}\"\ndevice = \"{dev}\"\nprofile = \"mtconnect-like\"\n");
    }
    text
}

fn t(eq: &str, ts: i64, state: State) -> Transition {
    Transition {
        equipment: eq.into(),
        ts,
        state,
    }
}

fn date(s: &str) -> time::Date {
    report::parse_date(s).unwrap()
}

/// Three days (2026-11-01..03, +08:00) of history, every hour and day
/// sealed as the scheduler would. Day 2: e1 only by hand, e3's device down
/// 10:00-12:00, the agent down 02:00-04:00.
struct Fixture {
    _dir: tempfile::TempDir,
    cfg: Config,
    key: GatewayKey,
    day0: i64,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cfg = plant_config(dir.path());
    let offset = cfg.metrics.utc_offset;
    let day0 = report::day_start(date("2026-11-01"), offset);
    let mut transitions = Vec::new();
    let mut samples = Vec::new();
    for d in 0..3 {
        let ds = day0 + d * 24 * H;
        transitions.push(t("e1", ds, State::Idle));
        if d == 1 {
            transitions.push(t("e1", ds + 8 * H, State::RunningManual));
        } else {
            transitions.push(t("e1", ds + 8 * H, State::RunningNc));
            transitions.push(t("e1", ds + 12 * H, State::RunningManual));
        }
        transitions.push(t("e1", ds + 17 * H, State::Idle));
        transitions.push(t("e2", ds, State::Idle));
        transitions.push(t("e2", ds + 9 * H, State::RunningManual));
        transitions.push(t("e2", ds + 16 * H, State::Idle));
        transitions.push(t("e3", ds, State::Idle));
        transitions.push(t("e3", ds + 6 * H, State::RunningNc));
        if d == 1 {
            transitions.push(t("e3", ds + 10 * H, State::Offline));
            transitions.push(t("e3", ds + 12 * H, State::RunningNc));
        }
        transitions.push(t("e3", ds + 20 * H, State::Idle));
        for m in 0..1440 {
            let minute = ds + m * MIN;
            if d == 1 && (2 * 60..4 * 60).contains(&m) {
                continue;
            }
            for e in ["e1", "e2", "e3"] {
                for _ in 0..60 {
                    samples.push(Sample {
                        equipment: e.into(),
                        minute,
                        good: !(e == "e3" && d == 1 && (10 * 60..12 * 60).contains(&m)),
                    });
                }
            }
        }
    }
    // The agent-down hours on day 2 are offline for everyone.
    let ds = day0 + 24 * H;
    for e in ["e1", "e2", "e3"] {
        transitions.push(t(e, ds + 2 * H, State::Offline));
        transitions.push(t(e, ds + 4 * H, State::Idle));
    }
    transitions.sort_by_key(|t| t.ts);
    let mut o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    o.commit(
        &[],
        &Batch {
            transitions,
            samples,
            ..Default::default()
        },
        &[],
        &[],
        day0,
    )
    .unwrap();
    seal_days(&mut o, &cfg, dir.path(), day0, 3);
    // The uplink: up from the start, lost 08:00-09:00 on day 2.
    o.record_uplink(day0, true, None).unwrap();
    o.record_uplink(day0 + 24 * H + 8 * H, false, Some("connection reset"))
        .unwrap();
    o.record_uplink(day0 + 24 * H + 9 * H, true, None).unwrap();
    let (key, created) = GatewayKey::load_or_create(dir.path()).unwrap();
    assert!(created);
    Fixture {
        _dir: dir,
        cfg,
        key,
        day0,
    }
}

/// Seals every hour, then the day, as the scheduler closes them.
fn seal_days(o: &mut Outbox, cfg: &Config, state: &Path, day0: i64, days: i64) {
    let conn = buffer::open_read_only(state).unwrap();
    let mut head = buffer::chain_head(&conn).unwrap();
    for d in 0..days {
        let ds = day0 + d * 24 * H;
        let mut windows: Vec<Window> = (0..24)
            .map(|h| Window {
                kind: WindowKind::Hour,
                start: ds + h * H,
                end: ds + (h + 1) * H,
            })
            .collect();
        windows.push(Window {
            kind: WindowKind::Day,
            start: ds,
            end: ds + 24 * H,
        });
        for w in windows {
            let data = buffer::window_data(&conn, w.start, w.end).unwrap();
            let (_, row, entry) = seal_window(
                &cfg.plant,
                &cfg.enterprise,
                &cfg.hash(),
                w,
                cfg.metrics.utc_offset,
                &data,
                head.as_ref(),
            )
            .unwrap();
            let entry = entry.unwrap();
            head = Some((entry.seal.index, entry.seal.digest.clone()));
            o.commit_sealed(&[row], &Batch::default(), &[], &[], &[entry], w.end)
                .unwrap();
        }
    }
}

fn write_report(f: &Fixture, from: &str, to: &str, now: i64) -> PathBuf {
    let out = f._dir.path().join(format!("report-{from}-{to}-{now}"));
    let r = report::build(&f.cfg, &f.key, date(from), date(to), now).unwrap();
    report::write(&out, &r, &f.key).unwrap();
    out
}

fn read_json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(report::JSON_FILE)).unwrap()).unwrap()
}

/// Writes `v` as the report and signs it again with `key`, as someone
/// holding the gateway key would: the figures themselves must give it away.
fn tamper(dir: &Path, v: &Value, key: &GatewayKey) {
    let mut json = serde_json::to_vec_pretty(v).unwrap();
    json.push(b'\n');
    std::fs::write(dir.join(report::JSON_FILE), &json).unwrap();
    std::fs::write(dir.join(report::SIG_FILE), key.sign(&json)).unwrap();
    // Keep the HTML in step so that only the intended check can fail.
    if let Ok(r) = serde_json::from_value::<report::EvidenceReport>(v.clone()) {
        std::fs::write(dir.join(report::HTML_FILE), report::html::render(&r)).unwrap();
    }
}

fn copy(dir: &Path, name: &str) -> PathBuf {
    let to = dir.with_file_name(format!(
        "{}-{name}",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&to).unwrap();
    for f in [report::JSON_FILE, report::SIG_FILE, report::HTML_FILE] {
        std::fs::copy(dir.join(f), to.join(f)).unwrap();
    }
    to
}

fn pubkey(k: &GatewayKey) -> [u8; 32] {
    zgsz_agent::signing::parse_public_key(&k.public_hex()).unwrap()
}

fn assert_fails(dir: &Path, key: Option<[u8; 32]>, needle: &str) {
    let o = verify_dir(dir, key);
    assert!(
        o.problems.iter().any(|p| p.contains(needle)),
        "expected a problem mentioning {needle:?}, got {:#?}",
        o.problems
    );
}

#[test]
fn report_from_a_sealed_history_verifies_and_shows_the_figures() {
    let f = fixture();
    let dir = write_report(&f, "2026-11-01", "2026-11-03", f.day0 + 3 * 24 * H + 2 * H);
    let o = verify_dir(&dir, Some(pubkey(&f.key)));
    assert!(o.ok(), "{:#?}", o.problems);

    let v = read_json(&dir);
    common::assert_schema("report", &v);
    let days = v["days"].as_array().unwrap();
    assert_eq!(days.len(), 3);
    assert!(days.iter().all(|d| d["status"] == "sealed"));
    // Key process "turning": e1 (cnc) and e2 (manual). e1 ran under NC on
    // days 1 and 3, not on day 2.
    let rate = |r: &Value| (r["numerator"].as_u64(), r["denominator"].as_u64());
    let verified: Vec<_> = days
        .iter()
        .map(|d| rate(&d["metrics"]["indicators"]["cnc_rate_verified"]))
        .collect();
    assert_eq!(
        verified,
        vec![(Some(1), Some(2)), (Some(0), Some(2)), (Some(1), Some(2))]
    );
    let h = &v["headline"];
    assert_eq!(rate(&h["cnc_rate_declared"]), (Some(1), Some(2)));
    assert_eq!(rate(&h["cnc_rate_verified"]), (Some(1), Some(2)));
    assert_eq!(rate(&h["networking_rate"]), (Some(3), Some(3)));
    assert_eq!(h["verified_meets_target"], false);
    // e1's NC time: 4 h on days 1 and 3.
    let e1 = &v["equipment"][0];
    assert_eq!(e1["time_ms"]["running_nc"], 8 * H);
    assert_eq!(e1["days_verified"], 2);
    // The agent was down 02:00-04:00 on day 2; e3's device 10:00-12:00.
    let agent = &v["outages"]["agent_down"];
    assert_eq!(agent.as_array().unwrap().len(), 1, "{agent:#}");
    assert_eq!(agent[0]["start"], "2026-11-02T02:00:00+08:00");
    assert_eq!(agent[0]["end"], "2026-11-02T04:00:00+08:00");
    let uplink = v["outages"]["uplink"]["down"].as_array().unwrap();
    assert_eq!(uplink.len(), 1, "{uplink:#?}");
    assert_eq!(uplink[0]["start"], "2026-11-02T08:00:00+08:00");
    assert_eq!(uplink[0]["end"], "2026-11-02T09:00:00+08:00");
    let dev = v["outages"]["device_down"].as_array().unwrap();
    assert!(
        dev.iter()
            .any(|g| g["equipment"] == "e3" && g["start"] == "2026-11-02T10:00:00+08:00"),
        "{dev:#?}"
    );
    assert!(
        !dev.iter()
            .any(|g| g["start"] == "2026-11-02T02:00:00+08:00"),
        "agent downtime is not device downtime"
    );
    // Hours and days of the period are on the chain, linked.
    assert_eq!(v["chain"]["entries"].as_array().unwrap().len(), 3 * 25);
    // The computation section substitutes the real numbers.
    let comp = v["computation"].as_array().unwrap();
    assert!(comp.iter().any(|c| c["figure"] == "cnc_rate_verified"
        && c["substituted"]
            .as_str()
            .unwrap()
            .starts_with("1 / 2 = 50.0%")));

    let html = std::fs::read_to_string(dir.join(report::HTML_FILE)).unwrap();
    for needle in [
        "关键工序数控化率",
        "CNC rate, verified",
        "目标 Target 65%",
        "设备状态时间线",
        "@page { size: A4",
        "@media print",
        "How each figure is computed",
        "扬州测试机械有限公司",
    ] {
        assert!(html.contains(needle), "report.html lacks {needle:?}");
    }
    assert!(!html.contains("<script"), "no scripts");
    assert_eq!(
        html.matches("http").count(),
        html.matches("http://www.w3.org/2000/svg").count(),
        "no links out but the SVG namespace"
    );
    assert!(!html.contains("src=\"http"), "no external assets");
    assert_eq!(html.matches("<svg").count(), 2);
}

#[test]
fn a_period_not_yet_over_ends_with_the_day_so_far() {
    let f = fixture();
    let now = f.day0 + 3 * 24 * H + 5 * H;
    let dir = write_report(&f, "2026-11-01", "2026-11-30", now);
    let o = verify_dir(&dir, None);
    assert!(o.ok(), "{:#?}", o.problems);
    let v = read_json(&dir);
    let days = v["days"].as_array().unwrap();
    assert_eq!(days.len(), 4);
    assert_eq!(days[3]["status"], "partial");
    assert_eq!(days[3]["metrics"]["window"]["end_ts"], now);
    assert_eq!(v["period"]["covered_end_ts"], now);
}

#[test]
fn an_edited_number_fails_even_when_signed_again() {
    let f = fixture();
    let dir = write_report(&f, "2026-11-01", "2026-11-03", f.day0 + 75 * H);
    let pk = Some(pubkey(&f.key));

    // Edited without the key: the signature no longer matches.
    let d = copy(&dir, "unsigned");
    let text = std::fs::read_to_string(d.join(report::JSON_FILE)).unwrap();
    let edited = text.replacen("\"numerator\": 1,", "\"numerator\": 2,", 1);
    assert_ne!(text, edited);
    std::fs::write(d.join(report::JSON_FILE), edited).unwrap();
    assert_fails(&d, pk, "signature does not match");

    // The headline, re-signed: re-derived from the days, it does not hold.
    let d = copy(&dir, "headline");
    let mut v = read_json(&d);
    v["headline"]["cnc_rate_verified"]["numerator"] = 2.into();
    v["headline"]["cnc_rate_verified"]["value"] = 1.0.into();
    tamper(&d, &v, &f.key);
    assert_fails(
        &d,
        pk,
        "headline.cnc_rate_verified.numerator is 2 in the report, but the report's own detail gives 1",
    );

    // A day's figure, re-signed: it no longer matches its seal.
    let d = copy(&dir, "day");
    let mut v = read_json(&d);
    v["days"][1]["metrics"]["equipment"][0]["time_ms"]["running_manual"] = 0.into();
    v["days"][1]["metrics"]["equipment"][0]["time_ms"]["running_nc"] = (9 * H).into();
    tamper(&d, &v, &f.key);
    assert_fails(
        &d,
        pk,
        "day 2026-11-02: its figures no longer match their seal",
    );
    assert_fails(&d, pk, "ran_nc is false but its NC running time");

    // A per-equipment flag in the period table.
    let d = copy(&dir, "flag");
    let mut v = read_json(&d);
    v["equipment"][1]["verified_nc"] = true.into();
    tamper(&d, &v, &f.key);
    assert_fails(&d, pk, "equipment[1].verified_nc is true in the report");

    // The HTML edited on its own.
    let d = copy(&dir, "html");
    let html = std::fs::read_to_string(d.join(report::HTML_FILE)).unwrap();
    std::fs::write(
        d.join(report::HTML_FILE),
        html.replacen("50.0%", "75.0%", 1),
    )
    .unwrap();
    assert_fails(&d, pk, "report.html is not the rendering of report.json");
}

#[test]
fn a_removed_day_or_reordered_entries_fail() {
    let f = fixture();
    let dir = write_report(&f, "2026-11-01", "2026-11-03", f.day0 + 75 * H);
    let pk = Some(pubkey(&f.key));

    let d = copy(&dir, "removed");
    let mut v = read_json(&d);
    v["days"].as_array_mut().unwrap().remove(1);
    tamper(&d, &v, &f.key);
    assert_fails(&d, pk, "days[1] is 2026-11-03, expected 2026-11-02");

    let d = copy(&dir, "removed-last");
    let mut v = read_json(&d);
    v["days"].as_array_mut().unwrap().pop();
    tamper(&d, &v, &f.key);
    assert_fails(&d, pk, "missing at the end: 2026-11-03");

    let d = copy(&dir, "days-swapped");
    let mut v = read_json(&d);
    v["days"].as_array_mut().unwrap().swap(0, 1);
    tamper(&d, &v, &f.key);
    assert_fails(&d, pk, "days[0] is 2026-11-02, expected 2026-11-01");

    let d = copy(&dir, "equipment-swapped");
    let mut v = read_json(&d);
    v["equipment"].as_array_mut().unwrap().swap(0, 2);
    tamper(&d, &v, &f.key);
    assert_fails(&d, pk, "equipment[0].id is \"e3\" in the report");

    let d = copy(&dir, "chain-swapped");
    let mut v = read_json(&d);
    v["chain"]["entries"].as_array_mut().unwrap().swap(3, 4);
    tamper(&d, &v, &f.key);
    assert_fails(&d, pk, "chain entry #4 follows #5");
}

#[test]
fn a_swapped_signature_or_key_fails() {
    let f = fixture();
    let dir = write_report(&f, "2026-11-01", "2026-11-03", f.day0 + 75 * H);
    let other_dir = write_report(&f, "2026-11-01", "2026-11-02", f.day0 + 75 * H);
    let pk = Some(pubkey(&f.key));

    // Another report's signature.
    let d = copy(&dir, "other-sig");
    std::fs::copy(other_dir.join(report::SIG_FILE), d.join(report::SIG_FILE)).unwrap();
    assert_fails(&d, pk, "signature does not match");

    // A truncated signature.
    let d = copy(&dir, "short-sig");
    std::fs::write(d.join(report::SIG_FILE), [0u8; 10]).unwrap();
    assert_fails(&d, pk, "exactly 64 bytes");

    // Signed by another key that the report names as its own: valid on
    // its face, but not the registered gateway.
    let impostor_dir = tempfile::tempdir().unwrap();
    let (impostor, _) = GatewayKey::load_or_create(impostor_dir.path()).unwrap();
    let d = copy(&dir, "impostor");
    let mut v = read_json(&d);
    v["gateway"]["public_key"] = impostor.public_hex().into();
    v["gateway"]["fingerprint"] = impostor.fingerprint().into();
    tamper(&d, &v, &impostor);
    assert_fails(&d, pk, "not signed by the registered gateway");
    assert!(
        verify_dir(&d, None).ok(),
        "without --pubkey only self-consistency is checked"
    );

    // The right report checked against the wrong registered key.
    assert_fails(&dir, Some(pubkey(&impostor)), "signature does not match");
}

#[test]
fn a_broken_chain_fails() {
    let f = fixture();
    let dir = write_report(&f, "2026-11-01", "2026-11-03", f.day0 + 75 * H);
    let pk = Some(pubkey(&f.key));

    let d = copy(&dir, "removed-entry");
    let mut v = read_json(&d);
    v["chain"]["entries"].as_array_mut().unwrap().remove(10);
    tamper(&d, &v, &f.key);
    assert_fails(&d, pk, "chain entry #12 follows #10");
    assert_fails(
        &d,
        pk,
        "chain entry #12: prev does not match the digest of entry #10",
    );

    let d = copy(&dir, "altered-entry");
    let mut v = read_json(&d);
    v["chain"]["entries"][7]["transitions_sha256"] = "0".repeat(64).into();
    tamper(&d, &v, &f.key);
    assert_fails(&d, pk, "chain entry #8 (hour window");
    assert_fails(&d, pk, "its digest does not match its contents");

    // A day re-sealed with a forged entry: the digest is recomputed, but
    // the next entry still points at the original.
    let d = copy(&dir, "forged");
    let mut v = read_json(&d);
    let entries = v["chain"]["entries"].as_array_mut().unwrap();
    let e = &mut entries[24];
    e["metrics_sha256"] = "1".repeat(64).into();
    let digest = zgsz_agent::chain::entry_digest(
        25,
        e["prev"].as_str().unwrap(),
        &"1".repeat(64),
        e["transitions_sha256"].as_str().unwrap(),
    );
    e["digest"] = digest.clone().into();
    v["days"][0]["metrics"]["seal"]["digest"] = digest.into();
    v["days"][0]["metrics"]["seal"]["metrics_sha256"] = "1".repeat(64).into();
    tamper(&d, &v, &f.key);
    assert_fails(
        &d,
        pk,
        "chain entry #26: prev does not match the digest of entry #25",
    );
    assert_fails(
        &d,
        pk,
        "day 2026-11-01: its figures no longer match their seal #25",
    );
}

#[test]
fn report_verify_and_identity_commands() {
    let f = fixture();
    let file = f._dir.path().join("agent.toml");
    // The same plant, from a file, for the binary.
    let cfg_text = format!(
        "[agent]\ngateway_id = \"gw-report\"\nstate_dir = {:?}\n[enterprise]\nname = \"扬州测试机械有限公司\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[metrics]\nutc_offset = \"+08:00\"\n[mqtt]\ntls = false\n[[devices]]\nid = \"d1\"\naddress = \"127.0.0.1:1502\"\n[[devices.tags]]\nname = \"controller_mode\"\narea = \"holding_register\"\naddress = 0\n[[devices.tags]]\nname = \"execution\"\narea = \"holding_register\"\naddress = 1\n[[processes]]\nid = \"turning\"\nname = \"数控车削\"\nkey = true\n[[equipment]]\nid = \"e1\"\nname = \"e1\"\nprocess = \"turning\"\nkind = \"cnc\"\ndevice = \"d1\"\nprofile = \"mtconnect-like\"\n",
        f._dir.path().display().to_string()
    );
    std::fs::write(&file, cfg_text).unwrap();
    let bin = env!("CARGO_BIN_EXE_zgsz-agent");
    let id = std::process::Command::new(bin)
        .args(["identity", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        id.status.success(),
        "{}",
        String::from_utf8_lossy(&id.stderr)
    );
    let id = String::from_utf8(id.stdout).unwrap();
    assert!(id.contains(&f.key.public_hex()), "{id}");
    assert!(
        id.contains(&format!("SHA256:{}", f.key.fingerprint())),
        "{id}"
    );
    assert!(id.contains("-----BEGIN PUBLIC KEY-----"));

    let out = f._dir.path().join("cli-report");
    let r = std::process::Command::new(bin)
        .args([
            "report",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-02",
            "--config",
        ])
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let pub_file = f._dir.path().join(zgsz_agent::signing::PUB_FILE);
    let ok = std::process::Command::new(bin)
        .arg("verify")
        .arg(&out)
        .arg("--pubkey")
        .arg(&pub_file)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let mut v = read_json(&out);
    v["days"][0]["date"] = "2026-10-31".into();
    tamper(&out, &v, &f.key);
    let bad = std::process::Command::new(bin)
        .arg("verify")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("MISMATCH: days[0] is 2026-10-31"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_windows_carry_a_linked_seal_under_a_compressed_clock() {
    common::logs();
    let common::CompressedDemo {
        clock,
        platform,
        dir,
        cfg,
        floor: _floor,
    } = common::CompressedDemo::start().await;
    let agent = zgsz_agent::agent::start(&cfg, clock.clone()).unwrap();
    // The gateway key was created on this first run, readable by its owner only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(zgsz_agent::signing::KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let sealed = |p: &common::Platform| -> Vec<Value> {
        let mut v: Vec<Value> = p
            .of_kind("metrics")
            .into_iter()
            .filter(|m| m.get("seal").is_some())
            .collect();
        v.sort_by_key(|m| m["seal"]["index"].as_u64());
        v.dedup_by_key(|m| m["seal"]["index"].as_u64());
        v
    };
    platform
        .wait_for(Duration::from_secs(60), "three sealed windows", |p| {
            sealed(p).len() >= 3
        })
        .await;
    agent.stop().await;
    let got = sealed(&platform);
    for (i, m) in got.iter().enumerate() {
        common::assert_schema("metrics", m);
        assert_ne!(m["window"]["kind"], "snapshot");
        let seal = &m["seal"];
        assert_eq!(seal["index"].as_u64(), Some(i as u64 + 1));
        // The platform recomputes the figures' digest from the payload.
        let lines = zgsz_agent::chain::metrics_lines(m).unwrap();
        assert_eq!(
            seal["metrics_sha256"].as_str().unwrap(),
            zgsz_agent::chain::sha256_hex(lines.as_bytes())
        );
        assert_eq!(
            seal["digest"].as_str().unwrap(),
            zgsz_agent::chain::entry_digest(
                i as u64 + 1,
                seal["prev"].as_str().unwrap(),
                seal["metrics_sha256"].as_str().unwrap(),
                seal["transitions_sha256"].as_str().unwrap()
            )
        );
        let prev = if i == 0 {
            zgsz_agent::chain::GENESIS
        } else {
            got[i - 1]["seal"]["digest"].as_str().unwrap()
        };
        assert_eq!(seal["prev"].as_str().unwrap(), prev);
    }
    for m in platform.of_kind("metrics") {
        common::assert_schema("metrics", &m);
    }
    // The database holds the same chain, and the transitions digest can be
    // recomputed from its state history.
    let conn = buffer::open_read_only(dir.path()).unwrap();
    let entries = buffer::chain_entries(&conn, 0, i64::MAX).unwrap();
    let first = &entries[0];
    assert_eq!(
        first.seal.digest,
        got[0]["seal"]["digest"].as_str().unwrap()
    );
    let data = buffer::window_data(&conn, first.start_ts, first.end_ts).unwrap();
    let ids: Vec<&str> = cfg.plant.equipment.iter().map(|e| &*e.id).collect();
    let lines = zgsz_agent::chain::transitions_lines(&ids, first.start_ts, first.end_ts, &data);
    assert_eq!(
        first.seal.transitions_sha256,
        zgsz_agent::chain::sha256_hex(lines.as_bytes())
    );
    // Windows follow the compressed clock: an hour passed in half a second.
    assert_eq!(first.end_ts - first.start_ts, H);
}

/// Finds Debian's chromium.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[ignore = "needs chromium (.ci/run installs it and runs ignored tests)"]
#[test]
fn the_demo_plants_report_renders_in_headless_chromium() {
    let chrome =
        chromium().expect("chromium is installed (apt-get install chromium); .ci/run installs it");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let bin = env!("CARGO_BIN_EXE_zgsz-agent");
    let demo = std::process::Command::new(bin)
        .args(["demo", "--speed", "8640", "--duration", "12s", "--report"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let verify = std::process::Command::new(bin)
        .arg("verify")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let page = format!("file://{}", out.join(report::HTML_FILE).display());
    let profile = dir.path().join("profile");
    let shot = dir.path().join("report.png");
    let base = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ];
    let run = |extra: &[String]| {
        std::process::Command::new(&chrome)
            .args(base)
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(extra)
            .arg(&page)
            .output()
            .unwrap()
    };
    let dom = run(&["--dump-dom".to_string()]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    for needle in [
        "关键工序数控化率",
        "Headline figures",
        "目标 Target 65%",
        "设备状态时间线",
        "数控车床 1#",
    ] {
        assert!(dom.contains(needle), "the rendered page lacks {needle:?}");
    }
    assert!(dom.matches("<svg").count() >= 2, "both charts rendered");
    assert!(
        !dom.contains("This page isn"),
        "chromium showed an error page"
    );
    let png = run(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1240,1754".to_string(),
    ]);
    assert!(
        png.status.success(),
        "{}",
        String::from_utf8_lossy(&png.stderr)
    );
    // A blank page compresses to a few kilobytes; the report does not.
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(size > 50_000, "screenshot is {size} bytes: blank page?");
}

#[test]
fn a_sealed_row_and_its_chain_entry_commit_together() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = plant_config(dir.path());
    let mut o = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).unwrap();
    o.commit(
        &[],
        &Batch {
            transitions: vec![t("e1", 0, State::Idle)],
            ..Default::default()
        },
        &[],
        &[],
        0,
    )
    .unwrap();
    let w = Window {
        kind: WindowKind::Hour,
        start: 0,
        end: H,
    };
    let conn = buffer::open_read_only(dir.path()).unwrap();
    let data = buffer::window_data(&conn, 0, H).unwrap();
    let seal = |head| {
        seal_window(
            &cfg.plant,
            &cfg.enterprise,
            &cfg.hash(),
            w,
            cfg.metrics.utc_offset,
            &data,
            head,
        )
        .unwrap()
    };
    let (report, row, entry) = seal(None);
    let entry = entry.unwrap();
    assert_eq!(report.seal.as_ref(), Some(&entry.seal));
    let body: Value = serde_json::from_slice(&[b"{", &row.body[..], b"}"].concat()).unwrap();
    assert_eq!(
        body["seal"]["digest"].as_str(),
        Some(entry.seal.digest.as_str())
    );
    assert!(entry.body.is_none(), "hour bodies are not kept");
    // The disk fills up during the transaction (a large row beside it):
    // neither the metrics row nor its chain entry is committed.
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    // The transition above is a states row already.
    let states_rows = o.stats().unwrap().rows;
    assert_eq!(states_rows, 1);
    o.set_max_pages(pages as u64).unwrap();
    let big = buffer::NewRow::new(buffer::Kind::Metrics, 1, vec![b' '; 256 * 1024]);
    assert!(o
        .commit_sealed(
            &[big, row.clone()],
            &Batch::default(),
            &[],
            &[],
            std::slice::from_ref(&entry),
            H
        )
        .is_err());
    o.set_max_pages(1 << 30).unwrap();
    assert_eq!(buffer::chain_head(&conn).unwrap(), None);
    assert_eq!(o.stats().unwrap().rows, states_rows);
    o.commit_sealed(
        &[row],
        &Batch::default(),
        &[],
        &[],
        std::slice::from_ref(&entry),
        H,
    )
    .unwrap();
    assert_eq!(
        buffer::chain_head(&conn).unwrap(),
        Some((1, entry.seal.digest.clone()))
    );
    assert_eq!(o.stats().unwrap().rows, states_rows + 1);
    // The next window links to it.
    let (_, _, next) = seal(Some(&(1, entry.seal.digest.clone())));
    assert_eq!(next.unwrap().seal.prev, entry.seal.digest);
}

#[test]
fn the_metrics_command_shows_the_seal_of_a_closed_window() {
    let f = fixture();
    let file = f._dir.path().join("plant.toml");
    std::fs::write(&file, plant_text(f._dir.path())).unwrap();
    let bin = env!("CARGO_BIN_EXE_zgsz-agent");
    for (window, at) in [("day", "2026-11-02"), ("hour", "2026-11-02T10:30")] {
        let out = std::process::Command::new(bin)
            .args([
                "metrics", "--json", "--window", window, "--at", at, "--config",
            ])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["window"]["kind"], window);
        assert!(v["seal"]["index"].as_u64().is_some(), "{window}: {v:#}");
        let lines = zgsz_agent::chain::metrics_lines(&v).unwrap();
        assert_eq!(
            v["seal"]["metrics_sha256"].as_str().unwrap(),
            zgsz_agent::chain::sha256_hex(lines.as_bytes())
        );
    }
}
