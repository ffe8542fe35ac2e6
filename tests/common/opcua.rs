//! OPC UA fixtures for the tests: simulator options, a one-device config,
//! and a collector of the readings the device tasks hand over.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use zgsz_agent::clock::SystemClock;
use zgsz_agent::config::Config;
use zgsz_agent::reading::{Reading, Value};
use zgsz_agent::sim::opcua::{MachineSpec, OpcUaSimOptions};
use zgsz_agent::sim::MachineKind;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn machine(name: &str, channels: u8) -> MachineSpec {
    MachineSpec {
        name: name.into(),
        kind: MachineKind::Mill,
        channels,
        cycle_s: 3,
        idle_s: 1,
    }
}

pub fn options(pki: &Path) -> OpcUaSimOptions {
    OpcUaSimOptions {
        port: 0,
        pki_dir: pki.to_path_buf(),
        trust_client_certs: true,
        allow_anonymous: true,
        users: Vec::new(),
        user_certificates: Vec::new(),
        secure_endpoints: false,
        machines: vec![machine("m1", 2)],
        plant_day: None,
    }
}

/// A config whose one device is the given OPC UA `[[devices]]` body.
pub fn config(state: &Path, device_toml: &str) -> Config {
    super::config(
        state,
        1883,
        &format!("[[devices]]\nid = \"m1\"\nprotocol = \"opcua\"\npoll_interval = \"200ms\"\ntimeout = \"3s\"\n{device_toml}"),
        "",
        "",
    )
}

/// Runs the config's devices and keeps every reading they hand over.
pub struct Collector {
    pub readings: Arc<Mutex<Vec<Reading>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Collector {
    pub fn start(cfg: &Config) -> Collector {
        let (tx, mut rx) = mpsc::channel::<Vec<Reading>>(64);
        let (stop, stop_rx) = watch::channel(false);
        let clock: Arc<dyn zgsz_agent::clock::Clock> = Arc::new(SystemClock);
        let mut tasks = zgsz_agent::source::spawn_all(&cfg.devices, &clock, &tx, &stop_rx);
        let readings = Arc::new(Mutex::new(Vec::new()));
        let sink = readings.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(cycle) = rx.recv().await {
                sink.lock().unwrap().extend(cycle);
            }
        }));
        Collector {
            readings,
            stop,
            tasks,
        }
    }

    pub fn of(&self, tag: &str) -> Vec<Reading> {
        self.readings
            .lock()
            .unwrap()
            .iter()
            .filter(|r| &*r.tag == tag)
            .cloned()
            .collect()
    }

    pub fn count(&self) -> usize {
        self.readings.lock().unwrap().len()
    }

    pub async fn wait(&self, what: &str, mut cond: impl FnMut(&[Reading]) -> bool) {
        let readings = self.readings.clone();
        super::wait_until(WAIT, what, move || cond(&readings.lock().unwrap())).await;
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks.into_iter().rev().skip(1) {
            let _ = t.await;
        }
    }
}

pub fn good(r: &Reading, tag: &str, v: &Value) -> bool {
    &*r.tag == tag && r.quality.is_good() && r.value.as_ref() == Some(v)
}
