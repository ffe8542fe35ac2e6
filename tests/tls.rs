//! TLS to the broker: server verification on, mutual TLS with client
//! certificates, against mosquitto configured to require them. The
//! certificates are generated here, for 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, Mosquitto};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use zgsz_agent::clock::SystemClock;
use zgsz_agent::sim::{Bank, SimDevice};

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "zgsz test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let leaf = |cn: &str, ip: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        if ip {
            p.subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("broker", true);
    let (client_cert, client_key) = leaf("gw-test", false);
    Pki {
        ca: ca_cert.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

async fn sim() -> SimDevice {
    let mut b = Bank::new(8);
    b.holding[0] = 42;
    SimDevice::start(HashMap::from([(1u8, Arc::new(Mutex::new(b)))]))
        .await
        .unwrap()
}

fn device(addr: std::net::SocketAddr) -> String {
    format!("[[devices]]\nid = \"plc-1\"\naddress = \"{addr}\"\npoll_interval = \"100ms\"\n[[devices.tags]]\nname = \"a\"\narea = \"holding_register\"\naddress = 0\n")
}

/// A config with TLS on; `client` adds the client certificate.
fn tls_config(
    dir: &Path,
    port: u16,
    ca: &str,
    client: Option<(&str, &str)>,
    devices: &str,
) -> zgsz_agent::config::Config {
    let mut mqtt = format!("tls = true\nca_file = \"{ca}\"\n");
    if let Some((cert, key)) = client {
        mqtt += &format!("client_cert_file = \"{cert}\"\nclient_key_file = \"{key}\"\n");
    }
    let text = format!(
        "[agent]\ngateway_id = \"gw-test\"\nstate_dir = \"{}\"\n[enterprise]\nname = \"测试\"\nuscc = \"{}\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nkeepalive = \"5s\"\ncarries = [\"metrics\", \"states\", \"status\", \"telemetry\"]\n{mqtt}\n{devices}",
        dir.join("state").display(),
        common::USCC
    );
    match zgsz_agent::config::load_str(&dir.join("agent.toml"), &text) {
        Ok((c, _)) => c,
        Err(e) => panic!("{e}"),
    }
}

fn broker_conf(dir: &Path, p: &Pki) -> String {
    format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\nuse_identity_as_username true\n",
        write(dir, "ca.pem", &p.ca),
        write(dir, "server.pem", &p.server_cert),
        write(dir, "server.key", &p.server_key)
    )
}

#[ignore = "needs mosquitto (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_delivers_and_a_missing_client_cert_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let broker = Mosquitto::require(&broker_conf(dir.path(), &p));
    let ca = write(dir.path(), "ca.pem", &p.ca);
    let cert = write(dir.path(), "client.pem", &p.client_cert);
    let key = write(dir.path(), "client.key", &p.client_key);
    let sim = sim().await;

    // With the client certificate: connects and its rows are acknowledged.
    let cfg = tls_config(
        dir.path(),
        broker.port,
        &ca,
        Some((&cert, &key)),
        &device(sim.addr),
    );
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let uplink = agent.uplink.clone();
    wait_until(
        Duration::from_secs(20),
        "acked telemetry over mutual TLS",
        || uplink.borrow().acked_messages >= 3,
    )
    .await;
    agent.stop().await;

    // Without it: the broker refuses the handshake; nothing is acked and
    // the reason is recorded.
    let other = tempfile::tempdir().unwrap();
    let cfg = tls_config(other.path(), broker.port, &ca, None, &device(sim.addr));
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let uplink = agent.uplink.clone();
    wait_until(Duration::from_secs(20), "a refused connection", || {
        uplink.borrow().last_error.is_some()
    })
    .await;
    let state = uplink.borrow().clone();
    assert!(
        !state.connected && state.acked_messages == 0 && state.connects == 0,
        "{state:?}"
    );
    agent.stop().await;
}

#[ignore = "needs mosquitto (.ci/run installs it and runs ignored tests)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_a_certificate_from_another_ca_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let stranger = pki();
    let broker = Mosquitto::require(
        &broker_conf(dir.path(), &p)
            .replace("require_certificate true\n", "require_certificate false\n"),
    );
    // The agent trusts only the stranger's CA.
    let ca = write(dir.path(), "other-ca.pem", &stranger.ca);
    let sim = sim().await;
    let cfg = tls_config(dir.path(), broker.port, &ca, None, &device(sim.addr));
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let uplink = agent.uplink.clone();
    wait_until(Duration::from_secs(20), "a failed handshake", || {
        uplink.borrow().last_error.is_some()
    })
    .await;
    let state = uplink.borrow().clone();
    assert_eq!(state.connects, 0);
    let why = state.last_error.unwrap_or_default();
    assert!(
        why.contains("set mqtt.ca_file to the CA that issued it"),
        "the error names the key to fix: {why}"
    );
    agent.stop().await;
}
