//! Evidence-report intake: a gateway's signed 数字画像 report
//! (`report.json` + `report.json.sig`) checked against the registry and
//! against the seals the platform itself received.
//!
//! The report's schema belongs to the agent, so the types here read only
//! what the intake needs and ignore the rest: a report with members added
//! later is still taken in. What decides is what the platform holds: the
//! key registered at enrolment (not the one the report names), and the
//! digests of the windows the gateway sent over MQTT. A report edited and
//! signed again with the gateway's own key still fails there, because the
//! platform's copy of the chain was received before the report was made.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zgsz_contract::chain::{entry_digest, hex, metrics_lines, sha256_hex, GENESIS};
use zgsz_contract::signature;

use crate::store::{now_ms, ReportRecord, Store, StoreError};

/// The schema the intake reads.
pub const SCHEMA: &str = "zgsz.report/1";

/// At most this many entry-by-entry reasons of one kind are listed; the
/// rest are counted in one more reason (a chain rewritten from some point
/// on differs in every entry after it).
const MAX_LISTED: usize = 20;

/// The parts of report.json the intake reads (no `deny_unknown_fields`:
/// the schema is the agent's).
#[derive(Debug, Deserialize)]
struct ReportView {
    schema: String,
    enterprise: EnterpriseView,
    gateway: GatewayView,
    period: PeriodView,
    days: Vec<DayView>,
    chain: ChainView,
}

#[derive(Debug, Deserialize)]
struct EnterpriseView {
    uscc: String,
    region_code: String,
}

#[derive(Debug, Deserialize)]
struct GatewayView {
    id: String,
    #[serde(default)]
    public_key: Option<String>,
}

#[derive(Debug, Deserialize)]
struct PeriodView {
    from: String,
    to: String,
}

#[derive(Debug, Deserialize)]
struct DayView {
    date: String,
    status: String,
    metrics: Value,
}

#[derive(Debug, Deserialize)]
struct ChainView {
    entries: Vec<EntryView>,
}

#[derive(Debug, Deserialize)]
struct EntryView {
    kind: String,
    start_ts: i64,
    index: u64,
    prev: String,
    digest: String,
    metrics_sha256: String,
    transitions_sha256: String,
}

/// `accepted` or `refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Accepted,
    Refused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Refused => "refused",
        }
    }
}

/// Why a report is refused. The texts are stable: clients and operators
/// read them; [`Reason::code`] is the part to match on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("report.json is not a {SCHEMA} report: {0}")]
    Malformed(String),
    #[error("schema is {0:?}, expected {SCHEMA:?}")]
    Schema(String),
    #[error("unknown gateway {0}: not enrolled")]
    UnknownGateway(String),
    #[error("the report names USCC {uscc} and region {region}, but gateway {gateway} is enrolled with {enrolled_uscc} and {enrolled_region}")]
    Enrolment {
        gateway: String,
        uscc: String,
        region: String,
        enrolled_uscc: String,
        enrolled_region: String,
    },
    #[error(
        "the report names public key {named}, but gateway {gateway} is enrolled with {registered}"
    )]
    OtherKey {
        gateway: String,
        named: String,
        registered: String,
    },
    #[error("signature against the registered key of gateway {gateway}: {why}")]
    Signature { gateway: String, why: String },
    #[error("the registered public key of gateway {gateway} is unusable: {why}")]
    RegisteredKey { gateway: String, why: String },
    #[error("chain entry {index}: digest {digest} is not the digest of its index, prev and hashes ({expected})")]
    EntryDigest {
        index: u64,
        digest: String,
        expected: String,
    },
    #[error("chain entry {index}: prev {prev} is not the digest of entry {before} ({expected})")]
    Link {
        index: u64,
        before: u64,
        prev: String,
        expected: String,
    },
    #[error("chain entry {index} follows entry {before}: the entries are not consecutive")]
    Order { index: u64, before: u64 },
    #[error("day {date}: {why}")]
    Day { date: String, why: String },
    #[error("chain entry {index} ({kind} from {start_ts}): digest {digest} in the report, but the platform received {received} from instance {instance}: the gateway rewrote its chain, or the report was edited and signed again")]
    Rewritten {
        index: u64,
        kind: String,
        start_ts: i64,
        digest: String,
        received: String,
        instance: String,
    },
    #[error("and {count} more {what}")]
    More { count: usize, what: &'static str },
}

impl Reason {
    /// A stable key per kind of reason, for clients to match on.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Malformed(_) => "malformed",
            Reason::Schema(_) => "schema",
            Reason::UnknownGateway(_) => "unknown_gateway",
            Reason::Enrolment { .. } => "enrolment",
            Reason::OtherKey { .. } => "other_key",
            Reason::Signature { .. } => "signature",
            Reason::RegisteredKey { .. } => "registered_key",
            Reason::EntryDigest { .. } => "entry_digest",
            Reason::Link { .. } => "chain_link",
            Reason::Order { .. } => "chain_order",
            Reason::Day { .. } => "day",
            Reason::Rewritten { .. } => "rewritten",
            Reason::More { .. } => "more",
        }
    }
}

/// How the report's chain entries compare with the seals received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Chain entries in the report.
    pub entries: u64,
    /// Entries the platform holds with the same digest.
    pub matched: u64,
    /// Entries the platform never received (evicted on the gateway, still
    /// on its way, or sent before enrolment): not compared.
    pub not_received: u64,
    /// Entries the platform holds with another digest.
    pub mismatched: u64,
}

/// A reason as answered and recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonOut {
    pub code: &'static str,
    pub text: String,
}

/// The outcome of one intake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Intake {
    /// The record's id in `reports`.
    pub id: String,
    pub verdict: Verdict,
    /// As the report names it; empty when it could not be read.
    pub gateway_id: String,
    pub period_from: String,
    pub period_to: String,
    /// SHA-256 of the exact bytes of report.json.
    pub report_sha256: String,
    pub counts: Counts,
    pub reasons: Vec<ReasonOut>,
}

impl Intake {
    /// Refused only because report.json could not be read as a report
    /// (an upload error rather than a finding).
    pub fn is_malformed(&self) -> bool {
        self.reasons.iter().any(|r| r.code == "malformed")
    }

    /// The verdict, the counts and each reason, one per line.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        let mut s = format!(
            "{}: gateway {}, {} to {}, report.json SHA-256 {}\n{} chain entries: {} matched, {} not received, {} mismatched\n",
            self.verdict.as_str().to_uppercase(),
            if self.gateway_id.is_empty() { "(none)" } else { &self.gateway_id },
            self.period_from,
            self.period_to,
            self.report_sha256,
            c.entries,
            c.matched,
            c.not_received,
            c.mismatched
        );
        for r in &self.reasons {
            s.push_str(&format!("REFUSED: {}\n", r.text));
        }
        s.push_str(&format!("recorded as {}\n", self.id));
        s
    }
}

/// Checks a report and its detached signature, records the intake in
/// `reports` (accepted or refused), and returns the verdict. Only a
/// database failure is an error; everything about the report is a reason.
pub async fn intake(
    store: &mut Store,
    report: &[u8],
    signature: &[u8],
) -> Result<Intake, StoreError> {
    let report_sha256 = sha256_hex(report);
    let (view, mut reasons, counts) = match serde_json::from_slice::<ReportView>(report) {
        Ok(view) => {
            let (reasons, counts) = examine(store, &view, report, signature).await?;
            (Some(view), reasons, counts)
        }
        Err(e) => (
            None,
            vec![Reason::Malformed(e.to_string())],
            Counts::default(),
        ),
    };
    cap(&mut reasons);
    let verdict = if reasons.is_empty() {
        Verdict::Accepted
    } else {
        Verdict::Refused
    };
    let reasons: Vec<ReasonOut> = reasons
        .iter()
        .map(|r| ReasonOut {
            code: r.code(),
            text: r.to_string(),
        })
        .collect();
    let (gateway_id, period_from, period_to) = view.map_or_else(Default::default, |v| {
        (v.gateway.id, v.period.from, v.period.to)
    });
    let mut out = Intake {
        id: String::new(),
        verdict,
        gateway_id,
        period_from,
        period_to,
        report_sha256,
        counts,
        reasons,
    };
    let record = ReportRecord {
        id: String::new(),
        received_ts: now_ms(),
        gateway_id: out.gateway_id.clone(),
        period_from: out.period_from.clone(),
        period_to: out.period_to.clone(),
        report_sha256: out.report_sha256.clone(),
        verdict: verdict.as_str().into(),
        reasons: serde_json::to_string(&out.reasons).unwrap_or_else(|_| "[]".into()),
        entries: count(counts.entries),
        matched: count(counts.matched),
        not_received: count(counts.not_received),
        mismatched: count(counts.mismatched),
    };
    out.id = store
        .record_report(&record, &String::from_utf8_lossy(report), &hex(signature))
        .await?;
    Ok(out)
}

fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Keeps the first [`MAX_LISTED`] reasons of each entry-by-entry kind and
/// counts the rest.
fn cap(reasons: &mut Vec<Reason>) {
    let mut seen: HashMap<&'static str, usize> = HashMap::new();
    let mut kept = Vec::with_capacity(reasons.len());
    for r in reasons.drain(..) {
        let n = seen.entry(r.code()).or_default();
        *n += 1;
        if *n <= MAX_LISTED {
            kept.push(r);
        }
    }
    let mut more: Vec<(&'static str, usize)> = seen
        .into_iter()
        .filter(|(_, n)| *n > MAX_LISTED)
        .map(|(code, n)| (code, n - MAX_LISTED))
        .collect();
    more.sort();
    for (code, count) in more {
        let what = match code {
            "rewritten" => "rewritten chain entries",
            "entry_digest" => "chain entries with a wrong digest",
            "chain_link" => "broken chain links",
            "chain_order" => "chain entries out of order",
            "day" => "day mismatches",
            _ => "reasons of the same kind",
        };
        kept.push(Reason::More { count, what });
    }
    *reasons = kept;
}

/// Every check of a readable report; the reasons in the order a forger
/// would have to get past them: registry, signature, the report's own
/// chain and days, then the platform's copy of the chain.
async fn examine(
    store: &mut Store,
    view: &ReportView,
    report: &[u8],
    sig: &[u8],
) -> Result<(Vec<Reason>, Counts), StoreError> {
    let mut reasons = Vec::new();
    if view.schema != SCHEMA {
        reasons.push(Reason::Schema(view.schema.clone()));
    }
    let id = &view.gateway.id;
    match store.gateway(id).await? {
        None => reasons.push(Reason::UnknownGateway(id.clone())),
        Some(g) => {
            if g.uscc != view.enterprise.uscc || g.region_code != view.enterprise.region_code {
                reasons.push(Reason::Enrolment {
                    gateway: id.clone(),
                    uscc: view.enterprise.uscc.clone(),
                    region: view.enterprise.region_code.clone(),
                    enrolled_uscc: g.uscc.clone(),
                    enrolled_region: g.region_code.clone(),
                });
            }
            if let Some(named) = &view.gateway.public_key {
                if !named.trim().eq_ignore_ascii_case(&g.public_key) {
                    reasons.push(Reason::OtherKey {
                        gateway: id.clone(),
                        named: named.clone(),
                        registered: g.public_key.clone(),
                    });
                }
            }
            match signature::parse_public_key(&g.public_key) {
                Err(e) => reasons.push(Reason::RegisteredKey {
                    gateway: id.clone(),
                    why: e.to_string(),
                }),
                Ok(key) => {
                    if let Err(e) = signature::verify(&key, report, sig) {
                        reasons.push(Reason::Signature {
                            gateway: id.clone(),
                            why: e.to_string(),
                        });
                    }
                }
            }
        }
    }
    let entries = &view.chain.entries;
    check_chain(entries, &mut reasons);
    check_days(view, &mut reasons);
    let counts = compare(store, id, entries, &mut reasons).await?;
    Ok((reasons, counts))
}

/// The report's own chain: each digest from its parts, each `prev` the
/// digest of the entry before, indexes consecutive.
fn check_chain(entries: &[EntryView], reasons: &mut Vec<Reason>) {
    let mut before: Option<&EntryView> = None;
    for e in entries {
        let expected = entry_digest(e.index, &e.prev, &e.metrics_sha256, &e.transitions_sha256);
        if expected != e.digest {
            reasons.push(Reason::EntryDigest {
                index: e.index,
                digest: e.digest.clone(),
                expected,
            });
        }
        match before {
            Some(b) if b.index.checked_add(1) != Some(e.index) => reasons.push(Reason::Order {
                index: e.index,
                before: b.index,
            }),
            Some(b) if e.prev != b.digest => reasons.push(Reason::Link {
                index: e.index,
                before: b.index,
                prev: e.prev.clone(),
                expected: b.digest.clone(),
            }),
            None if e.index == 1 && e.prev != GENESIS => reasons.push(Reason::Link {
                index: 1,
                before: 0,
                prev: e.prev.clone(),
                expected: GENESIS.into(),
            }),
            _ => {}
        }
        before = Some(e);
    }
}

/// Each sealed day's figures hash to the `metrics_sha256` of the report's
/// day entry that starts with it.
fn check_days(view: &ReportView, reasons: &mut Vec<Reason>) {
    let days: HashMap<i64, &EntryView> = view
        .chain
        .entries
        .iter()
        .filter(|e| e.kind == "day")
        .map(|e| (e.start_ts, e))
        .collect();
    for day in view.days.iter().filter(|d| d.status == "sealed") {
        let bad = |why: String| Reason::Day {
            date: day.date.clone(),
            why,
        };
        let Some(start) = day
            .metrics
            .pointer("/window/start_ts")
            .and_then(Value::as_i64)
        else {
            reasons.push(bad("metrics.window.start_ts is missing".into()));
            continue;
        };
        let Some(entry) = days.get(&start) else {
            reasons.push(bad(format!(
                "sealed, but the report's chain has no day entry starting at {start}"
            )));
            continue;
        };
        match metrics_lines(&day.metrics) {
            Err(e) => reasons.push(bad(format!("metrics: {e}"))),
            Ok(lines) => {
                let sha = sha256_hex(lines.as_bytes());
                if sha != entry.metrics_sha256 {
                    reasons.push(bad(format!(
                        "the figures hash to {sha}, but chain entry {} has metrics_sha256 {}: the figures were changed after sealing",
                        entry.index, entry.metrics_sha256
                    )));
                }
            }
        }
    }
}

/// Each report entry against the seals the platform received for the
/// same gateway, chain index and window start (any instance).
async fn compare(
    store: &mut Store,
    gateway_id: &str,
    entries: &[EntryView],
    reasons: &mut Vec<Reason>,
) -> Result<Counts, StoreError> {
    let mut counts = Counts {
        entries: entries.len() as u64,
        ..Counts::default()
    };
    let (Some(from), Some(to)) = (
        entries.iter().map(|e| e.start_ts).min(),
        entries.iter().map(|e| e.start_ts).max(),
    ) else {
        return Ok(counts);
    };
    let mut stored: HashMap<(i64, i64), Vec<(String, String)>> = HashMap::new();
    for d in store.digests_between(gateway_id, from, to).await? {
        stored
            .entry((d.chain_index, d.start_ts))
            .or_default()
            .push((d.instance, d.digest));
    }
    for e in entries {
        let key = (i64::try_from(e.index).unwrap_or(-1), e.start_ts);
        match stored.get(&key) {
            None => counts.not_received += 1,
            Some(held) if held.iter().any(|(_, d)| *d == e.digest) => counts.matched += 1,
            Some(held) => {
                counts.mismatched += 1;
                let (instance, received) = held.first().cloned().unwrap_or_default();
                reasons.push(Reason::Rewritten {
                    index: e.index,
                    kind: e.kind.clone(),
                    start_ts: e.start_ts,
                    digest: e.digest.clone(),
                    received,
                    instance,
                });
            }
        }
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;
    use zgsz_contract::chain::seal;

    use super::*;
    use crate::store::db::args;
    use crate::store::Gateway;

    const H: i64 = 3_600_000;
    const DAY0: i64 = 1_793_462_400_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn body(kind: &str, start: i64, end: i64, numerator: i64) -> Value {
        let mut indicators = serde_json::Map::new();
        for name in zgsz_contract::chain::INDICATORS {
            indicators.insert(
                name.into(),
                json!({ "numerator": numerator, "denominator": 2 }),
            );
        }
        json!({
            "window": { "kind": kind, "start_ts": start, "end_ts": end },
            "config_hash": "c0",
            "industry": "discrete",
            "indicators": indicators,
            "processes": [],
            "equipment": [],
        })
    }

    /// Two hours and the day they are in, sealed in that order, and the
    /// report of that day: (report, chain entries as (kind, start, seal)).
    fn report(key: &SigningKey, day_numerator: i64) -> Value {
        let windows = [
            ("hour", DAY0, DAY0 + H, 1),
            ("hour", DAY0 + H, DAY0 + 2 * H, 1),
            ("day", DAY0, DAY0 + 24 * H, day_numerator),
        ];
        let mut head: Option<(u64, String)> = None;
        let mut entries = Vec::new();
        let mut day = Value::Null;
        for (kind, start, end, n) in windows {
            let b = body(kind, start, end, n);
            let s = seal(head.as_ref(), &metrics_lines(&b).unwrap(), "t");
            head = Some((s.index, s.digest.clone()));
            entries.push(json!({
                "kind": kind, "start_ts": start, "end_ts": end, "config_hash": "c0",
                "index": s.index, "prev": s.prev, "digest": s.digest,
                "metrics_sha256": s.metrics_sha256, "transitions_sha256": s.transitions_sha256,
            }));
            if kind == "day" {
                day = b;
            }
        }
        json!({
            "schema": SCHEMA,
            "agent_version": "later members are ignored",
            "enterprise": { "uscc": "91350100M000100Y43", "region_code": "321003", "name": "x" },
            "gateway": { "id": "gw-1", "public_key": hex(key.verifying_key().as_bytes()) },
            "period": { "from": "2026-11-01", "to": "2026-11-01" },
            "days": [{ "date": "2026-11-01", "status": "sealed", "metrics": day }],
            "chain": { "entries": entries },
        })
    }

    fn signed(v: &Value, key: &SigningKey) -> (Vec<u8>, Vec<u8>) {
        let json = serde_json::to_vec_pretty(v).unwrap();
        let sig = key.sign(&json).to_bytes().to_vec();
        (json, sig)
    }

    async fn store(dir: &tempfile::TempDir) -> Store {
        let mut s = Store::sqlite(dir.path().join("p.db")).await.unwrap();
        s.enrol(&Gateway {
            gateway_id: "gw-1".into(),
            uscc: "91350100M000100Y43".into(),
            region_code: "321003".into(),
            public_key: hex(key(1).verifying_key().as_bytes()),
        })
        .await
        .unwrap();
        s
    }

    /// Stores entry `i` of `report` as a received window with `digest`.
    async fn received(s: &mut Store, report: &Value, i: usize, digest: Option<&str>) {
        let e = &report["chain"]["entries"][i];
        let mut tx = s.begin(true).await.unwrap();
        tx.execute(
            "INSERT INTO windows (gateway_id, instance, chain_index, msg_id, kind, start_ts,
               end_ts, config_hash, states_upto_seq, prev, digest, metrics_sha256,
               transitions_sha256, verdict, reason, flags)
             VALUES ('gw-1', 'i1', ?1, 'i1:1', ?2, ?3, 0, '', 0, '', ?4, '', '', 'verified', '', '')",
            args![
                e["index"].as_i64().unwrap(),
                e["kind"].as_str().unwrap(),
                e["start_ts"].as_i64().unwrap(),
                digest.unwrap_or(e["digest"].as_str().unwrap())
            ],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
    }

    fn codes(i: &Intake) -> Vec<&'static str> {
        i.reasons.iter().map(|r| r.code).collect()
    }

    #[tokio::test]
    async fn a_report_matching_what_was_received_is_accepted_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir).await;
        let r = report(&key(1), 1);
        received(&mut s, &r, 0, None).await;
        received(&mut s, &r, 2, None).await;
        let (json, sig) = signed(&r, &key(1));
        let i = intake(&mut s, &json, &sig).await.unwrap();
        assert_eq!(i.verdict, Verdict::Accepted, "{}", i.summary());
        assert_eq!(
            i.counts,
            Counts {
                entries: 3,
                matched: 2,
                not_received: 1,
                mismatched: 0
            }
        );
        assert_eq!(i.report_sha256, sha256_hex(&json));
        let rows = s.reports().await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].id, i.id);
        assert_eq!((rows[0].verdict.as_str(), rows[0].matched), ("accepted", 2));
    }

    #[tokio::test]
    async fn each_refusal_names_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir).await;
        let good = report(&key(1), 1);
        received(&mut s, &good, 0, None).await;
        received(&mut s, &good, 2, None).await;

        // One byte of a figure edited after signing.
        let (json, sig) = signed(&good, &key(1));
        let text =
            String::from_utf8(json)
                .unwrap()
                .replacen("\"numerator\": 1", "\"numerator\": 2", 1);
        let i = intake(&mut s, text.as_bytes(), &sig).await.unwrap();
        assert_eq!(i.verdict, Verdict::Refused);
        assert!(codes(&i).contains(&"signature"), "{}", i.summary());
        assert!(
            i.reasons[0].text.starts_with(
                "signature against the registered key of gateway gw-1: the signature does not match"
            ),
            "{}",
            i.summary()
        );

        // A day figure changed, the chain sealed again and signed with the
        // gateway's own key: the platform's copy of the day differs.
        let (json, sig) = signed(&report(&key(1), 0), &key(1));
        let i = intake(&mut s, &json, &sig).await.unwrap();
        assert_eq!(codes(&i), ["rewritten"], "{}", i.summary());
        assert_eq!((i.counts.matched, i.counts.mismatched), (1, 1));
        assert!(i.reasons[0]
            .text
            .starts_with("chain entry 3 (day from 1793462400000): digest "));

        // The day's figures changed without sealing again.
        let mut v = good.clone();
        v["days"][0]["metrics"]["indicators"]["completeness"]["numerator"] = json!(2);
        let (json, sig) = signed(&v, &key(1));
        let i = intake(&mut s, &json, &sig).await.unwrap();
        assert_eq!(codes(&i), ["day"], "{}", i.summary());
        assert!(i.reasons[0]
            .text
            .contains("the figures were changed after sealing"));

        // Signed by another key, which the report names as its own.
        let (json, sig) = signed(&report(&key(2), 1), &key(2));
        let i = intake(&mut s, &json, &sig).await.unwrap();
        assert_eq!(codes(&i), ["other_key", "signature"], "{}", i.summary());

        // An unknown gateway; another enterprise.
        let mut v = good.clone();
        v["gateway"]["id"] = json!("gw-9");
        let (json, sig) = signed(&v, &key(1));
        let i = intake(&mut s, &json, &sig).await.unwrap();
        assert_eq!(codes(&i), ["unknown_gateway"], "{}", i.summary());
        assert_eq!(i.reasons[0].text, "unknown gateway gw-9: not enrolled");
        let mut v = good.clone();
        v["enterprise"]["region_code"] = json!("321002");
        let (json, sig) = signed(&v, &key(1));
        let i = intake(&mut s, &json, &sig).await.unwrap();
        assert_eq!(codes(&i), ["enrolment"], "{}", i.summary());

        // A forged digest, a broken link.
        let mut v = good.clone();
        v["chain"]["entries"][1]["digest"] = json!("ab".repeat(32));
        let (json, sig) = signed(&v, &key(1));
        let i = intake(&mut s, &json, &sig).await.unwrap();
        assert_eq!(codes(&i), ["entry_digest", "chain_link"], "{}", i.summary());

        // Not a report at all.
        let i = intake(&mut s, b"{\"schema\": 1", &sig).await.unwrap();
        assert_eq!(codes(&i), ["malformed"], "{}", i.summary());
        assert!(i.is_malformed());

        let rows = s.reports().await.unwrap();
        assert_eq!(rows.len(), 8, "every intake is recorded");
        assert!(rows.iter().all(|r| r.verdict == "refused"));
    }

    #[test]
    fn long_lists_of_one_reason_are_counted() {
        let mut reasons: Vec<Reason> = (0..25)
            .map(|i| Reason::Order {
                index: i + 2,
                before: i,
            })
            .collect();
        reasons.push(Reason::UnknownGateway("gw".into()));
        cap(&mut reasons);
        assert_eq!(reasons.len(), 22);
        assert_eq!(
            reasons.last().map(ToString::to_string).as_deref(),
            Some("and 5 more chain entries out of order")
        );
    }
}
