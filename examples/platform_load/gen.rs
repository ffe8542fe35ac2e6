//! The load generator of `platform_load`: sealed metrics and states
//! streams made by the agent's own code, enveloped for many gateways.
//!
//! A stream is what one gateway's outbox holds after an outage: for every
//! hour, the states row of that hour's transitions (committed through
//! `Outbox::commit`, which numbers them as the agent does) and the hour's
//! metrics row, computed and sealed onto the digest chain by
//! `metrics::seal_window` and committed with its chain entry. The seal
//! covers the figures and the transitions, not who sent them (the
//! identity and msg_id are the uplink's envelope, added at publish), so a
//! few streams serve any number of gateways: each gateway gets its own id,
//! USCC, region, instance and envelope from `MqttUplink::message`.
//!
//! Shared by the example and by `tests/platform_load.rs`, which runs the
//! output through the receiver's `ingest::handle`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use zgsz_agent::buffer::{self, Batch, BufferHandles, Kind, Outbox, Row, Stats};
use zgsz_agent::clock::SystemClock;
use zgsz_agent::clocksync::ClockSync;
use zgsz_agent::config::{self, Config};
use zgsz_agent::metrics::{seal_window, Window, WindowData, WindowKind};
use zgsz_agent::plant::{State, Transition};
use zgsz_agent::uplink::mqtt::{MqttUplink, Topics, UplinkState};

const HOUR: i64 = 3_600_000;
/// 2026-11-23T00:00:00+08:00: the windows are hours of local time.
pub const T0: i64 = 1_763_827_200_000;
/// The receiver's topic prefix (the agent's default).
pub const PREFIX: &str = "zgsz";

/// Yangzhou's district codes, which the gateways are spread over.
const REGIONS: [&str; 6] = ["321002", "321003", "321012", "321023", "321081", "321084"];

/// An agent config for a plant of `machines` CNC machines on one process;
/// the platform sink is `[mqtt]` with the default topics.
fn config_text(machines: usize, state_dir: &Path) -> String {
    let mut t = format!(
        "[agent]\ngateway_id = \"gw-template\"\nstate_dir = \"{}\"\n\
         [enterprise]\nname = \"示例\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n\
         [mqtt]\ntls = false\ntopic_prefix = \"{PREFIX}\"\n\
         [[processes]]\nid = \"turning\"\nname = \"数控车削\"\nkey = true\n",
        state_dir.display()
    );
    for m in 0..machines {
        t += &format!(
            "[[devices]]\nid = \"machine-{m:02}\"\naddress = \"127.0.0.1:{}\"\n\
             [[devices.tags]]\nname = \"controller_mode\"\narea = \"holding_register\"\naddress = 0\n\
             [[devices.tags]]\nname = \"execution\"\narea = \"holding_register\"\naddress = 1\n\
             [[devices.tags]]\nname = \"part_count\"\narea = \"holding_register\"\naddress = 2\n",
            20_000 + m
        );
        t += &format!(
            "[[equipment]]\nid = \"machine-{m:02}\"\nname = \"数控车床 {m}#\"\nprocess = \"turning\"\nkind = \"cnc\"\ndevice = \"machine-{m:02}\"\nprofile = \"mtconnect-like\"\nparts = \"part_count\"\n"
        );
    }
    t
}

/// The template agent: its config, and an outbox thread whose handles the
/// uplinks need (nothing is published through it).
pub struct Agent {
    pub cfg: Config,
    handles: BufferHandles,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Must run inside a tokio runtime (the outbox thread's channels).
    pub fn new(machines: usize) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = config::load_str(
            Path::new("platform_load.toml"),
            &config_text(machines, dir.path()),
        )
        .expect("the generated agent config is valid")
        .0;
        let ob =
            Outbox::open(&dir.path().join("uplink"), &cfg.buffer, &cfg.routes()).expect("outbox");
        let handles = buffer::spawn(ob, &cfg.buffer, Arc::new(SystemClock));
        Agent {
            cfg,
            handles,
            _dir: dir,
        }
    }

    /// The outbox rows (states and metrics, in seq order) of `hours` sealed
    /// hourly windows, from an outbox of its own; `seed` varies the
    /// transitions.
    pub fn stream(&self, hours: usize, seed: u64) -> Vec<Row> {
        let cfg = &self.cfg;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ob = Outbox::open(dir.path(), &cfg.buffer, &cfg.routes()).expect("outbox");
        let bit = ob.sink_bit(&cfg.sinks[0].name).expect("the platform sink");
        let mut rng = fastrand::Rng::with_seed(seed);
        let ids: Vec<Arc<str>> = cfg.plant.equipment.iter().map(|e| e.id.clone()).collect();
        let pick = |rng: &mut fastrand::Rng| State::ALL[1 + rng.usize(0..3)];
        // Every machine's state when the outage began, as the first
        // states row of the stream.
        let mut now: HashMap<String, State> = HashMap::new();
        let first: Vec<Transition> = ids
            .iter()
            .map(|id| {
                let s = pick(&mut rng);
                now.insert(id.to_string(), s);
                Transition {
                    equipment: id.clone(),
                    ts: T0,
                    state: s,
                }
            })
            .collect();
        let mut pending = first;
        let mut head: Option<(u64, String)> = None;
        for h in 0..hours as i64 {
            let w = Window {
                kind: WindowKind::Hour,
                start: T0 + h * HOUR,
                end: T0 + (h + 1) * HOUR,
            };
            let initial = now.clone();
            // About two changes per machine an hour, strictly inside it.
            let mut inside: Vec<Transition> = Vec::new();
            for id in &ids {
                for _ in 0..rng.usize(0..=4) {
                    inside.push(Transition {
                        equipment: id.clone(),
                        ts: rng.i64(w.start + 1..w.end),
                        state: pick(&mut rng),
                    });
                }
            }
            inside.sort_by_key(|t| t.ts);
            for t in &inside {
                now.insert(t.equipment.to_string(), t.state);
            }
            pending.extend(inside.iter().cloned());
            let batch = Batch {
                transitions: std::mem::take(&mut pending),
                ..Default::default()
            };
            let committed = ob.commit(&[], &batch, &[], &[], w.end).expect("states row");
            let data = WindowData {
                initial,
                transitions: inside
                    .iter()
                    .map(|t| (t.equipment.to_string(), t.ts, t.state))
                    .collect(),
                samples: ids
                    .iter()
                    .map(|id| (id.to_string(), (3600, 3600)))
                    .collect(),
                upto_seq: committed.last_seq,
            };
            let (_, row, entry) = seal_window(
                &cfg.plant,
                &cfg.enterprise,
                &cfg.hash(),
                w,
                cfg.metrics.utc_offset,
                &data,
                head.as_ref(),
            )
            .expect("sealing a window");
            let entry = entry.expect("an hour is sealed");
            head = Some((entry.seal.index, entry.seal.digest.clone()));
            ob.commit_sealed(&[row], &Batch::default(), &[], &[], &[entry], w.end)
                .expect("metrics row");
        }
        let rows = ob.lease(bit, 0, usize::MAX >> 1).expect("lease");
        assert!(rows
            .iter()
            .all(|r| matches!(r.kind, Kind::States | Kind::Metrics)));
        rows
    }

    /// Gateway number `n`: its own id, USCC, region and outbox instance.
    pub fn gateway(&self, n: usize) -> Gateway {
        let mut enterprise = self.cfg.enterprise.clone();
        enterprise.uscc = format!("91321000MA{n:08}");
        enterprise.region_code = REGIONS[n % REGIONS.len()].to_string();
        let id = format!("gw-{n:05}");
        let sink = self.cfg.sinks[0].clone();
        let topics = Topics::new(&sink.mqtt.topic_prefix, sink.layout, &enterprise, &id);
        let (state, board) = tokio::sync::watch::channel(UplinkState::default());
        let uplink = MqttUplink::new(
            sink,
            &enterprise,
            &id,
            self.handles.client.clone(),
            self.handles.appended.clone(),
            Arc::new(SystemClock),
            state,
            vec![board],
        )
        .with_clock_sync(|| ClockSync::Synchronized);
        Gateway {
            instance: format!("{:016x}", 0x5eed_0000_0000_0000u64 + n as u64),
            id,
            uscc: enterprise.uscc,
            region: enterprise.region_code,
            uplink,
            metrics: topics.of("metrics"),
            states: topics.of("states"),
            status: topics.of("status"),
        }
    }
}

/// One simulated gateway.
pub struct Gateway {
    pub id: String,
    pub uscc: String,
    pub region: String,
    /// Its outbox's instance, the first half of every msg_id.
    pub instance: String,
    uplink: MqttUplink,
    metrics: String,
    states: String,
    status: String,
}

impl Gateway {
    /// The topic and payload the uplink publishes for `row`.
    pub fn message(&self, row: &Row) -> (&str, Vec<u8>) {
        let topic = match row.kind {
            Kind::Metrics => &self.metrics,
            _ => &self.states,
        };
        let payload = self
            .uplink
            .message(row, &self.instance, true)
            .expect("a metrics or states message");
        (topic, payload)
    }

    /// An `online` status message, as sent every `status_interval`.
    pub fn status(&self) -> (&str, Vec<u8>) {
        let stats = Stats {
            instance: self.instance.clone(),
            ..Default::default()
        };
        (
            &self.status,
            self.uplink.status_payload("online", Some(&stats)),
        )
    }
}
