//! `zgsz-platform demo`: a city on one machine. The real agent runs for
//! each gateway of [`roster`] against its own simulated shop floor, all
//! publishing to one embedded broker; the real receiver ingests them into
//! a SQLite file and serves the pages on loopback.
//!
//! The gateways share a [`CatchUpClock`]: it starts `days` in the past and
//! runs fast until it meets the system time, so a week of figures exists
//! within a minute, and from then on the city runs live. One gateway goes
//! down on the way, one enterprise overstates its rate, and one is
//! enrolled but never reports, so every page has something to show.

pub mod roster;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zgsz_agent::agent::RunningAgent;
use zgsz_agent::clock::{CatchUpClock, Clock};
use zgsz_agent::sim::ShopFloor;

use crate::config::{Backend, Config};
use crate::store::{Gateway as Enrolled, Store, StoreError};
use roster::Fate;

/// How the demo city runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Days of history made before the city goes live.
    pub days: u32,
    /// Time compression until then; `None`: the history takes about
    /// [`CATCH_UP`].
    pub speed: Option<f64>,
    /// Where the pages are served.
    pub listen: SocketAddr,
    /// Where the receiver's database and the gateways' state go; `None`:
    /// a temporary directory, removed at the end.
    pub dir: Option<PathBuf>,
}

/// How long the history takes to make by default.
pub const CATCH_UP: Duration = Duration::from_secs(50);

/// Gateways silent this long (real seconds) are listed as stale: the
/// gateways send their status every 5 s, the gateway that goes down
/// stops during the catch-up.
const STALE_AFTER_S: u64 = 20;

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("gateway {gateway}: {why}")]
    Gateway { gateway: String, why: String },
    #[error("the receiver's database: {0}")]
    Store(#[from] StoreError),
    #[error("the receiver's config: {0}")]
    Config(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

/// The running city.
pub struct City {
    /// The city overview.
    pub url: String,
    /// Opens a session and leads to the overview; `?next=/path` to another
    /// page.
    pub link: String,
    pub broker: SocketAddr,
    pub clock: Arc<CatchUpClock>,
    /// The receiver's SQLite file.
    pub database: PathBuf,
    /// Gateways started (the silent one is not).
    pub gateways: usize,
    /// The gateways' clock at the start, ms since the epoch.
    pub start_ms: i64,
    pub enterprises: usize,
    /// A connection of its own for [`City::progress`] and the reports.
    reader: tokio::sync::Mutex<Store>,
    /// The configs of the gateways started, by gateway id.
    configs: Vec<(String, zgsz_agent::config::Config)>,
    dir: PathBuf,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    receiver: JoinHandle<Result<(), StoreError>>,
    _dir: Option<tempfile::TempDir>,
}

/// What the receiver holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The gateways' clock, ms since the epoch.
    pub now_ms: i64,
    pub caught_up: bool,
    /// Sealed windows stored, and verified.
    pub windows: usize,
    pub verified: usize,
    /// Verified day windows.
    pub days: usize,
}

impl City {
    /// Starts the broker, the receiver and its pages, and every gateway.
    pub async fn start(opts: &Options) -> Result<City, DemoError> {
        let history = Duration::from_secs(u64::from(opts.days.max(1)) * 86_400);
        let speed = opts
            .speed
            .unwrap_or(history.as_secs_f64() / CATCH_UP.as_secs_f64() + 1.0);
        let clock = Arc::new(CatchUpClock::new(speed, history));
        let start_ms = clock.now_ms();
        let (dir, temp) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
                (d.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("zgsz-city-")
                    .tempdir()
                    .map_err(io("creating a temporary directory"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let port = zgsz_agent::broker::free_port().map_err(io("finding a port for the broker"))?;
        let broker = zgsz_agent::broker::start_embedded(port)
            .map_err(io("starting the embedded MQTT broker"))?;

        let database = dir.join("platform.db");
        let backend = Backend::Sqlite {
            path: database.clone(),
        };
        let gateways = roster::gateways();
        let mut store = Store::open(&backend).await?;
        let mut keys = Vec::new();
        for g in &gateways {
            let state = dir.join(&g.gateway_id);
            std::fs::create_dir_all(&state).map_err(io(format!("creating {}", state.display())))?;
            let (key, _) =
                zgsz_agent::signing::GatewayKey::load_or_create(&state).map_err(|e| {
                    DemoError::Gateway {
                        gateway: g.gateway_id.clone(),
                        why: e.to_string(),
                    }
                })?;
            store
                .enrol(&Enrolled {
                    gateway_id: g.gateway_id.clone(),
                    uscc: g.uscc.clone(),
                    region_code: g.region_code.to_string(),
                    public_key: key.public_hex(),
                })
                .await?;
            keys.push(state);
        }

        let (stop, stopped) = watch::channel(false);
        let cfg = receiver_config(&database, broker.port())?;
        let receiver = tokio::spawn(crate::ingest::run(cfg, store, until(stopped.clone())));
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(io(format!(
                "listening on {} (another port: --listen 127.0.0.1:0)",
                opts.listen
            )))?;
        let addr = listener.local_addr().map_err(io("the pages' address"))?;
        let secret = crate::auth::random_hex().map_err(|e| DemoError::Config(e.to_string()))?;
        let site = crate::http::Site {
            users: Vec::new(),
            stale_ms: i64::try_from(STALE_AFTER_S * 1000).unwrap_or(i64::MAX),
            link: Some(secret.clone()),
        };
        let mut tasks = vec![tokio::spawn({
            let pages = Store::open(&backend).await?;
            let stopped = stopped.clone();
            async move {
                if let Err(e) = crate::http::serve(listener, pages, site, until(stopped)).await {
                    tracing::error!(error = %e, "The demo's pages stopped");
                }
            }
        })];

        let mut started = 0;
        let mut configs = Vec::new();
        let mut enterprises = std::collections::BTreeSet::new();
        for (g, state) in gateways.iter().zip(&keys) {
            enterprises.insert(g.uscc.clone());
            let days = match g.fate {
                Fate::NeverStarts => continue,
                Fate::Runs => None,
                Fate::DownAfterDays(d) => Some(d),
            };
            let (agent, floor, cfg) = start_gateway(g, state, &clock, speed, broker.port()).await?;
            configs.push((g.gateway_id.clone(), cfg));
            started += 1;
            let down_at = days.map(|d| clock.now_ms() + i64::from(d) * 86_400_000);
            tasks.push(tokio::spawn(run_gateway(
                agent,
                floor,
                clock.clone(),
                down_at,
                stopped.clone(),
            )));
        }
        Ok(City {
            url: format!("http://{addr}/"),
            link: format!("http://{addr}/login/link/{secret}"),
            broker,
            clock,
            database,
            gateways: started,
            start_ms,
            enterprises: enterprises.len(),
            reader: tokio::sync::Mutex::new(Store::open(&backend).await?),
            configs,
            dir,
            stop,
            tasks,
            receiver,
            _dir: temp,
        })
    }

    /// What the receiver holds so far (its own connection).
    pub async fn progress(&self) -> Result<Progress, DemoError> {
        let windows = self.reader.lock().await.windows().await?;
        let verified = windows.iter().filter(|w| w.verdict == "verified");
        Ok(Progress {
            now_ms: self.clock.now_ms(),
            caught_up: self.clock.caught_up(),
            windows: windows.len(),
            verified: verified.clone().count(),
            days: verified.filter(|w| w.kind == "day").count(),
        })
    }

    /// What a diagnostic service provider does: the evidence reports of
    /// two gateways over the history's whole days, made and signed by the
    /// agent's own code and taken in as `POST /api/v1/reports` takes
    /// them; and one of them again with one figure edited, which is
    /// refused. Returns (gateway, verdict) of each intake.
    pub async fn upload_reports(&self) -> Result<Vec<(String, String)>, DemoError> {
        let now = self.clock.now_ms();
        let mut out = Vec::new();
        let wanted = [roster::OVERSTATING, roster::DOWN.0];
        let gateways = roster::gateways();
        for (gateway_id, cfg) in &self.configs {
            let Some(g) = gateways.iter().find(|g| &g.gateway_id == gateway_id) else {
                continue;
            };
            if !wanted.contains(&g.enterprise) || g.fate != Fate::Runs {
                continue;
            }
            let fail = |why: String| DemoError::Gateway {
                gateway: gateway_id.clone(),
                why,
            };
            let date = |ms: i64| {
                let text = zgsz_agent::metrics::rfc3339(ms, cfg.metrics.utc_offset);
                zgsz_agent::report::parse_date(text.get(..10).unwrap_or_default())
                    .ok_or_else(|| fail(format!("no date in {text}")))
            };
            // The history's first and last whole days.
            let (from, to) = (date(self.start_ms + DAY_MS)?, date(now - DAY_MS)?);
            if from > to {
                continue;
            }
            let (key, _) = zgsz_agent::signing::GatewayKey::load_or_create(&cfg.agent.state_dir)
                .map_err(|e| fail(e.to_string()))?;
            let report = zgsz_agent::report::build(cfg, &key, from, to, now)
                .map_err(|e| fail(e.to_string()))?;
            let dir = self.dir.join("reports").join(gateway_id);
            zgsz_agent::report::write(&dir, &report, &key).map_err(|e| fail(e.to_string()))?;
            let read = |name: &str| {
                let path = dir.join(name);
                std::fs::read(&path).map_err(io(format!("reading {}", path.display())))
            };
            let (json, sig) = (
                read(zgsz_agent::report::JSON_FILE)?,
                read(zgsz_agent::report::SIG_FILE)?,
            );
            let mut store = self.reader.lock().await;
            let i = crate::report::intake(&mut store, &json, &sig).await?;
            out.push((gateway_id.clone(), i.verdict.as_str().to_string()));
            if g.enterprise == roster::DOWN.0 {
                // One figure changed after signing.
                let text = String::from_utf8_lossy(&json).replacen(
                    "\"numerator\": 1",
                    "\"numerator\": 2",
                    1,
                );
                let i = crate::report::intake(&mut store, text.as_bytes(), &sig).await?;
                out.push((gateway_id.clone(), i.verdict.as_str().to_string()));
            }
        }
        Ok(out)
    }

    /// Stops the gateways, then the receiver and the pages.
    pub async fn stop(self) -> Result<(), DemoError> {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        match self.receiver.await {
            Ok(r) => r?,
            Err(e) => tracing::error!(error = %e, "The demo's receiver task failed"),
        }
        Ok(())
    }
}

/// Completes when `stop` says so (or its sender is gone).
async fn until(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// The receiver's config: the database and the embedded broker. (The
/// pages get the demo's short staleness from their [`crate::http::Site`].)
fn receiver_config(database: &Path, port: u16) -> Result<Config, DemoError> {
    let text = format!(
        "[database]\npath = {path}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"city-demo-1\"\nshare_group = \"city\"\n",
        path = toml_string(&database.display().to_string()),
    );
    let mut cfg = Config::parse("demo", &text).map_err(|e| DemoError::Config(e.to_string()))?;
    // One instance; and the embedded broker's shared subscriptions keep
    // only one filter per group.
    cfg.mqtt.share_group.clear();
    Ok(cfg)
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Starts one gateway: its shop floor on the shared clock, and the real
/// agent pointed at it and at the broker.
async fn start_gateway(
    g: &roster::Gateway,
    state: &Path,
    clock: &Arc<CatchUpClock>,
    speed: f64,
    broker_port: u16,
) -> Result<(RunningAgent, ShopFloor, zgsz_agent::config::Config), DemoError> {
    let fail = |why: String| DemoError::Gateway {
        gateway: g.gateway_id.clone(),
        why,
    };
    let (mut cfg, _) = zgsz_agent::config::load_str(Path::new("demo-city.toml"), &g.config)
        .map_err(|e| fail(e.to_string()))?;
    let list: Vec<_> = g
        .machines
        .iter()
        .map(|(id, kind)| (id.as_str(), *kind, 90, 20))
        .collect();
    let shared: Arc<dyn Clock> = clock.clone();
    let floor = ShopFloor::start_plant_day_with(&list, shared.clone(), cfg.metrics.utc_offset)
        .await
        .map_err(|e| fail(format!("starting its simulated machines: {e}")))?;
    for (id, addr) in floor.addresses() {
        cfg.set_device_address(&id, &addr.to_string());
    }
    // A poll every 100 ms of real time while the clock runs fast: some 20
    // simulated minutes, enough for daily figures; the same interval of
    // clock time once it runs live.
    let poll = Duration::from_millis(100).mul_f64(speed);
    for d in &mut cfg.devices {
        Arc::make_mut(d).poll_interval = poll;
    }
    for e in &mut Arc::make_mut(&mut cfg.plant).equipment {
        e.poll_interval = poll;
    }
    cfg.set_broker("127.0.0.1", broker_port);
    cfg.set_state_dir(state);
    let agent = zgsz_agent::agent::start(&cfg, shared).map_err(|e| fail(e.to_string()))?;
    Ok((agent, floor, cfg))
}

/// Runs one gateway until the demo stops, or until `down_at` on the
/// gateways' clock, when it goes down for good.
async fn run_gateway(
    agent: RunningAgent,
    floor: ShopFloor,
    clock: Arc<CatchUpClock>,
    down_at: Option<i64>,
    mut stop: watch::Receiver<bool>,
) {
    let down = async {
        match down_at {
            Some(at) => {
                while clock.now_ms() < at {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            None => std::future::pending().await,
        }
    };
    let went_down = tokio::select! {
        () = down => true,
        _ = stop.wait_for(|s| *s) => false,
    };
    agent.stop().await;
    drop(floor);
    if went_down {
        let _ = stop.wait_for(|s| *s).await;
    }
}
