//! A throw-away PostgreSQL cluster for tests: `initdb` into a temporary
//! directory, listening on a Unix socket in that directory only (no TCP),
//! started with `pg_ctl`, stopped and removed on drop.
//!
//! Run as root, the server runs as the `postgres` OS user (PostgreSQL
//! refuses root), through `runuser`, and the directory is handed to it.
//! The binaries are found on PATH or in Debian's
//! `/usr/lib/postgresql/<version>/bin`. Tests that need a cluster are
//! `#[ignore = "needs PostgreSQL (initdb, pg_ctl)"]`; `.ci/run` installs
//! PostgreSQL and runs them. Without PostgreSQL they fail when `CI` is set
//! and skip with a notice on stderr otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub struct PgCluster {
    /// The cluster's directory: `data/`, the log and the socket.
    dir: tempfile::TempDir,
    /// The directory holding initdb, pg_ctl and createdb.
    bin: PathBuf,
    /// Run the binaries as the `postgres` OS user (we are root).
    as_postgres: bool,
}

/// Numbers the databases created in one test process.
static NEXT_DB: AtomicUsize = AtomicUsize::new(1);

impl PgCluster {
    /// Starts a cluster; `None` (after a notice) when PostgreSQL is not
    /// installed outside CI.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = find_bin() else {
            unavailable("initdb and pg_ctl are not installed (apt-get install postgresql)");
            return None;
        };
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("zgsz-pg-")
            .tempdir()
            .expect("a temporary directory");
        if as_postgres {
            let (Some(uid), Some(gid)) = (id("-u"), id("-g")) else {
                unavailable(
                    "running as root, but there is no `postgres` OS user to run the server",
                );
                return None;
            };
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("handing the cluster directory to the postgres user");
        }
        let cluster = PgCluster {
            dir,
            bin,
            as_postgres,
        };
        let data = cluster.data();
        cluster.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
        );
        // Unix socket only, in the cluster's own directory. fsync off: a
        // fast shutdown still writes everything; only a crash of the whole
        // machine would lose data, and the directory is thrown away.
        let conf = format!(
            "\nlisten_addresses = ''\nunix_socket_directories = '{}'\nfsync = off\n",
            cluster.dir.path().display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(cluster.dir.path().join("data/postgresql.conf"))
            .expect("the cluster's postgresql.conf");
        std::io::Write::write_all(&mut f, conf.as_bytes()).expect("writing postgresql.conf");
        cluster.pg_ctl("start");
        Some(cluster)
    }

    /// One cluster shared by the tests of this process that run at the
    /// same time; stopped when the last of them drops it.
    pub fn shared() -> Option<Arc<PgCluster>> {
        static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap();
        if let Some(c) = shared.upgrade() {
            return Some(c);
        }
        let c = Arc::new(PgCluster::start()?);
        *shared = Arc::downgrade(&c);
        Some(c)
    }

    /// Creates a new, empty database; its connection URL.
    pub fn create_database(&self) -> String {
        let name = format!("zgsz_{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
        let socket = self.dir.path().display().to_string();
        self.run("createdb", &["-h", &socket, "-U", "postgres", &name]);
        self.url(&name)
    }

    /// The URL of database `name`, as the receiver's `database.url`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgresql://postgres@/{name}?host={}",
            self.dir.path().display()
        )
    }

    /// Appends `conf` to the cluster's postgresql.conf and restarts it
    /// (the load benchmark turns `fsync` back on).
    pub fn reconfigure(&self, conf: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("data/postgresql.conf"))
            .expect("the cluster's postgresql.conf");
        std::io::Write::write_all(&mut f, format!("\n{conf}\n").as_bytes())
            .expect("writing postgresql.conf");
        self.pg_ctl_stop("fast");
        self.pg_ctl("start");
    }

    /// `pg_ctl stop -m fast`: the server ends every connection.
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    pub fn start_again(&self) {
        self.pg_ctl("start");
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.data();
        let log = self.dir.path().join("log").display().to_string();
        self.run("pg_ctl", &["-D", &data, "-l", &log, "-w", action]);
    }

    fn pg_ctl_stop(&self, mode: &str) -> bool {
        let data = self.data();
        self.command("pg_ctl", &["-D", &data, "-w", "-m", mode, "stop"])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        c.args(args)
            .current_dir(self.dir.path())
            .stdout(std::process::Stdio::null());
        c
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program, args)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
            panic!(
                "{program} {args:?} failed: {}\n{}\nserver log:\n{log}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing in a test cluster needs to be kept. The
        // directory is removed by the TempDir afterwards.
        self.pg_ctl_stop("immediate");
    }
}

/// The directory holding `pg_ctl` (and `initdb`, `createdb` beside it).
fn find_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("pg_ctl"))
            .find(|f| f.is_file())
    });
    // Debian's pg_ctl on PATH may be a symlink into the version's bin
    // directory, where createdb is the real one (not pg_wrapper's).
    if let Some(dir) = on_path
        .and_then(|f| f.canonicalize().ok())
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .filter(|d| d.join("initdb").is_file() && d.join("createdb").is_file())
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("pg_ctl").is_file() && bin.join("initdb").is_file()).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `id -u postgres` or `id -g postgres`.
fn id(flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// PostgreSQL is missing: a failure in CI, a visible skip elsewhere.
fn unavailable(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("{why}; CI must run the PostgreSQL tests (.ci/run installs PostgreSQL)");
    }
    eprintln!("NOTICE: skipping a PostgreSQL test: {why}");
}
