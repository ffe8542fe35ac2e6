//! The OPC UA source against the in-process OPC 40501-shaped server:
//! subscriptions and deadbands, polling, security and trust, logins,
//! server restarts, bad nodes, and the machine-tool profile into the
//! CNC-rate metrics. Everything binds 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

mod common;

use common::opcua::{config, good, options, Collector, WAIT};

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zgsz_agent::clock::SystemClock;
use zgsz_agent::reading::{Quality, Value};
use zgsz_agent::sim::opcua::OpcUaSim;
use zgsz_agent::source::opcua::session::ConnectError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_delivers_changes_and_honours_the_deadband() {
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcUaSim::start(options(&dir.path().join("server-pki")))
        .await
        .unwrap();
    sim.hold("m1", true);
    sim.set("m1", "Monitoring/Channel1/FeedOverride", 50.0f64)
        .unwrap();
    sim.set("m1", "Monitoring/Channel2/FeedOverride", 50.0f64)
        .unwrap();
    let cfg = config(
        &dir.path().join("state"),
        &format!(
            "endpoint = \"{}\"\nroot = \"Machines/m1\"\n\
             [[devices.tags]]\nname = \"feed_db\"\npath = \"Monitoring/Channel1/FeedOverride\"\ndeadband_absolute = 5.0\npublishing_interval = \"100ms\"\nsampling_interval = \"50ms\"\n\
             [[devices.tags]]\nname = \"feed_all\"\npath = \"Monitoring/Channel2/FeedOverride\"\npublishing_interval = \"100ms\"\nsampling_interval = \"50ms\"\n",
            sim.endpoint()
        ),
    );
    let c = Collector::start(&cfg);
    c.wait("both initial values", |rs| {
        rs.iter().any(|r| good(r, "feed_db", &Value::Float(50.0)))
            && rs.iter().any(|r| good(r, "feed_all", &Value::Float(50.0)))
    })
    .await;
    // Small steps: within the deadband for one tag, reported for the other.
    for v in [51.0f64, 52.0, 53.0] {
        sim.set("m1", "Monitoring/Channel1/FeedOverride", v)
            .unwrap();
        sim.set("m1", "Monitoring/Channel2/FeedOverride", v)
            .unwrap();
        c.wait(&format!("feed_all = {v}"), |rs| {
            rs.iter().any(|r| good(r, "feed_all", &Value::Float(v)))
        })
        .await;
    }
    // A step beyond the deadband (from the last reported 50) is reported.
    sim.set("m1", "Monitoring/Channel1/FeedOverride", 60.0f64)
        .unwrap();
    c.wait("feed_db = 60", |rs| {
        rs.iter().any(|r| good(r, "feed_db", &Value::Float(60.0)))
    })
    .await;
    let seen: Vec<f64> = c
        .of("feed_db")
        .iter()
        .filter_map(|r| r.value.as_ref().and_then(Value::as_f64))
        .collect();
    assert!(
        seen.iter().all(|v| *v == 50.0 || *v == 60.0),
        "the deadband let small changes through: {seen:?}"
    );
    // Unchanged values are re-stated every cycle (200 ms), so the plant
    // model sees the tag alive: many more readings than changes.
    assert!(c.of("feed_db").len() >= 5, "{:?}", c.of("feed_db").len());
    c.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polled_tags_are_read_every_cycle_and_a_bad_node_fails_only_its_tag() {
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcUaSim::start(options(&dir.path().join("server-pki")))
        .await
        .unwrap();
    sim.hold("m1", true);
    sim.set("m1", "Monitoring/MachineTool/OperationMode", 1i32)
        .unwrap();
    let sim_ns = sim.namespace_index("urn:zgsz-agent:sim").unwrap();
    let cfg = config(
        &dir.path().join("state"),
        &format!(
            "endpoint = \"{}\"\n\
             [[devices.tags]]\nname = \"mode\"\nnode = \"ns={sim_ns};s=Machines/m1/Monitoring/MachineTool/OperationMode\"\nmode = \"poll\"\n\
             [[devices.tags]]\nname = \"ghost\"\nnode = \"ns={sim_ns};s=Machines/m1/NoSuchNode\"\n\
             [[devices.tags]]\nname = \"ghost_polled\"\nnode = \"ns={sim_ns};s=NoSuchNode\"\nmode = \"poll\"\n\
             [[devices.tags]]\nname = \"nowhere\"\npath = \"Machines/m1/Nowhere/Value\"\n",
            sim.endpoint()
        ),
    );
    let c = Collector::start(&cfg);
    c.wait("mode = 1", |rs| {
        rs.iter().any(|r| good(r, "mode", &Value::Int(1)))
    })
    .await;
    sim.set("m1", "Monitoring/MachineTool/OperationMode", 0i32)
        .unwrap();
    c.wait("mode = 0 after a write", |rs| {
        rs.iter().any(|r| good(r, "mode", &Value::Int(0)))
    })
    .await;
    c.wait("bad readings for the bad nodes", |rs| {
        ["ghost", "ghost_polled", "nowhere"]
            .iter()
            .all(|t| rs.iter().any(|r| &*r.tag == *t))
    })
    .await;
    for (tag, reason) in [
        ("ghost", "BadNodeIdUnknown"),
        ("ghost_polled", "BadNodeIdUnknown"),
        ("nowhere", "BadNoMatch"),
    ] {
        for r in c.of(tag) {
            match &r.quality {
                Quality::Bad(why) => assert_eq!(why.to_string(), reason, "{tag}"),
                Quality::Good => panic!("{tag} was good: {r:?}"),
            }
        }
    }
    assert!(c.of("mode").iter().all(|r| r.quality.is_good()));
    c.stop().await;
    sim.stop().await;
}

/// Basic256Sha256 with SignAndEncrypt: the server's certificate is first
/// rejected (and saved), then trusted once moved into pki/trusted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_session_needs_the_server_certificate_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&dir.path().join("server-pki"));
    opts.secure_endpoints = true;
    let sim = OpcUaSim::start(opts).await.unwrap();
    sim.hold("m1", true);
    sim.set("m1", "Monitoring/MachineTool/OperationMode", 1i32)
        .unwrap();
    let state = dir.path().join("state");
    let cfg = config(
        &state,
        &format!(
            "endpoint = \"{}\"\nsecurity_policy = \"Basic256Sha256\"\nsecurity_mode = \"SignAndEncrypt\"\nroot = \"Machines/m1\"\n\
             [[devices.tags]]\nname = \"mode\"\npath = \"Monitoring/MachineTool/OperationMode\"\n",
            sim.endpoint()
        ),
    );
    let dev = cfg.devices[0].clone();
    let err = match zgsz_agent::source::opcua::read_once(&dev, Arc::new(SystemClock)).await {
        Err(e) => e,
        Ok(_) => panic!("an unknown server certificate was accepted"),
    };
    let ConnectError::Untrusted { rejected, .. } = &err else {
        panic!("expected an untrusted-certificate error, got: {err}");
    };
    let msg = err.to_string();
    assert!(msg.contains("mv '") && msg.contains("pki/trusted"), "{msg}");
    // The gateway created its own application certificate on first use.
    assert!(state.join("pki/own/cert.der").is_file());
    // Trust it the way the message says.
    let rejected = std::path::PathBuf::from(rejected);
    let trusted = state
        .join("pki/trusted")
        .join(rejected.file_name().unwrap());
    std::fs::rename(&rejected, &trusted).unwrap();
    let rows = zgsz_agent::source::opcua::read_once(&dev, Arc::new(SystemClock))
        .await
        .unwrap_or_else(|e| panic!("after trusting: {e}"));
    assert_eq!(
        rows[0].reading.value,
        Some(Value::Int(1)),
        "{:?}",
        rows[0].reading
    );

    // Under any file name and extension, too (copied in by hand, as an
    // HMI exports it, rather than moved).
    std::fs::remove_file(&trusted).unwrap();
    std::fs::write(
        state.join("pki/trusted/machine-m1.crt"),
        sim.server_certificate_der(),
    )
    .unwrap();
    let rows = zgsz_agent::source::opcua::read_once(&dev, Arc::new(SystemClock))
        .await
        .unwrap_or_else(|e| panic!("trusted under another name: {e}"));
    assert!(rows[0].reading.quality.is_good());

    // And the streaming source over the encrypted channel.
    let c = Collector::start(&cfg);
    c.wait("mode over SignAndEncrypt", |rs| {
        rs.iter().any(|r| good(r, "mode", &Value::Int(1)))
    })
    .await;
    c.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_login_and_a_wrong_password_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&dir.path().join("server-pki"));
    opts.allow_anonymous = false;
    opts.users = vec![("operator".into(), "s3cret".into())];
    let sim = OpcUaSim::start(opts).await.unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let device = |pw: &str| {
        let file = state.join(format!("pw-{pw}"));
        std::fs::write(&file, format!("{pw}\n")).unwrap();
        config(
            &state,
            &format!(
                "endpoint = \"{}\"\nidentity = \"username\"\nusername = \"operator\"\npassword_file = \"{}\"\nroot = \"Machines/m1\"\n\
                 [[devices.tags]]\nname = \"mode\"\npath = \"Monitoring/MachineTool/OperationMode\"\n",
                sim.endpoint(),
                file.display()
            ),
        )
        .devices[0]
            .clone()
    };
    let rows = zgsz_agent::source::opcua::read_once(&device("s3cret"), Arc::new(SystemClock))
        .await
        .unwrap_or_else(|e| panic!("right password: {e}"));
    assert!(rows[0].reading.quality.is_good(), "{:?}", rows[0].reading);
    let err =
        match zgsz_agent::source::opcua::read_once(&device("wrong"), Arc::new(SystemClock)).await {
            Err(e) => e,
            Ok(_) => panic!("a wrong password was accepted"),
        };
    let msg = err.to_string();
    assert!(
        matches!(err, ConnectError::Login { .. })
            && msg.contains("operator")
            && msg.contains("password_file"),
        "{msg}"
    );
    assert!(!msg.contains("wrong"), "the password leaked into: {msg}");
    sim.stop().await;
}

/// `profile = "opcua-machine-tool"` with only an endpoint and a root: the
/// agent finds the OPC 40501 nodes itself, and the equipment's state flows
/// into the CNC-rate metrics that reach the platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machine_tool_profile_end_to_end_into_the_cnc_rate() {
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcUaSim::start(options(&dir.path().join("server-pki")))
        .await
        .unwrap();
    sim.hold("m1", true);
    // Manual mode with channel 1 active: running, but not under NC.
    sim.set("m1", "Monitoring/MachineTool/OperationMode", 0i32)
        .unwrap();
    sim.set("m1", "Monitoring/Channel1/ChannelState", 0i32)
        .unwrap();
    sim.set("m1", "Monitoring/Channel2/ChannelState", 2i32)
        .unwrap();
    let sim_ns = sim.namespace_index("urn:zgsz-agent:sim").unwrap();
    let port = zgsz_agent::broker::free_port().unwrap();
    zgsz_agent::broker::start_embedded(port).unwrap();
    let platform = common::Platform::subscribe(port).await;
    let mut cfg = common::config(
        &dir.path().join("state"),
        port,
        &format!(
            "[[devices]]\nid = \"m1\"\nprotocol = \"opcua\"\nendpoint = \"{}\"\nroot = \"Machines/m1\"\nprofile = \"opcua-machine-tool\"\npoll_interval = \"200ms\"\n\
             [[devices.tags]]\nname = \"ghost\"\nnode = \"ns={sim_ns};s=NoSuchNode\"\n\
             [[processes]]\nid = \"milling\"\nname = \"数控铣削\"\nkey = true\n\
             [[equipment]]\nid = \"m1\"\nname = \"5-axis mill\"\nprocess = \"milling\"\nkind = \"cnc\"\ndevice = \"m1\"\n",
            sim.endpoint()
        ),
        "",
        "",
    );
    cfg.metrics.snapshot_interval = Duration::from_millis(300);
    let agent = zgsz_agent::agent::start(&cfg, Arc::new(SystemClock)).unwrap();
    let verified = |m: &serde_json::Value| {
        (
            m["indicators"]["cnc_rate_verified"]["numerator"].as_u64(),
            m["indicators"]["cnc_rate_verified"]["denominator"].as_u64(),
        )
    };
    let manual_ms = |m: &serde_json::Value| {
        m["equipment"][0]["time_ms"]["running_manual"]
            .as_u64()
            .unwrap_or(0)
    };
    platform
        .wait_for(WAIT, "time running manually", |p| {
            p.of_kind("metrics").iter().any(|m| manual_ms(m) > 0)
        })
        .await;
    for m in platform.of_kind("metrics") {
        assert_eq!(verified(&m), (Some(0), Some(1)), "{m}");
    }
    // Automatic: now under NC, and the verified rate follows.
    sim.set("m1", "Monitoring/MachineTool/OperationMode", 1i32)
        .unwrap();
    platform
        .wait_for(WAIT, "verified 1/1", |p| {
            p.of_kind("metrics")
                .iter()
                .any(|m| verified(m) == (Some(1), Some(1)))
        })
        .await;
    // The readings themselves reached the platform under the profile's names.
    let tags: std::collections::HashSet<String> = platform
        .of_kind("telemetry")
        .iter()
        .flat_map(common::readings)
        .filter_map(|r| r["tag"].as_str().map(str::to_string))
        .collect();
    for t in [
        "operation_mode",
        "channel_state",
        "channel_mode",
        "program_state",
    ] {
        assert!(tags.contains(t), "{t} missing from {tags:?}");
    }
    for m in platform.of_kind("metrics") {
        common::assert_schema("metrics", &m);
    }
    // OPC UA readings, and the server's status names as reasons, fit the
    // published telemetry schema.
    let telemetry = platform.of_kind("telemetry");
    for m in &telemetry {
        common::assert_schema("telemetry", m);
    }
    let ghost: Vec<serde_json::Value> = telemetry
        .iter()
        .flat_map(common::readings)
        .filter(|r| r["tag"] == "ghost")
        .collect();
    assert!(
        !ghost.is_empty() && ghost.iter().all(|r| r["reason"] == "BadNodeIdUnknown"),
        "the bad node's reason did not reach the platform: {ghost:?}"
    );
    agent.stop().await;
    sim.stop().await;
}

/// A cut cable (no FIN, no RST) between gateway and machine: the session's
/// keep-alives fail, readings turn bad, and the link heals by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_is_detected_and_heals() {
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcUaSim::start(options(&dir.path().join("server-pki")))
        .await
        .unwrap();
    let upstream: std::net::SocketAddr = format!("127.0.0.1:{}", sim.port()).parse().unwrap();
    let proxy = common::Proxy::start(upstream, common::Mode::Forward).await;
    let mut cfg = config(
        &dir.path().join("state"),
        &format!(
            "endpoint = \"opc.tcp://127.0.0.1:{}/\"\nroot = \"Machines/m1\"\n\
             [[devices.tags]]\nname = \"feed\"\npath = \"Monitoring/Channel1/FeedOverride\"\n",
            proxy.port
        ),
    );
    // A short timeout, so the cut is noticed within a few seconds.
    std::sync::Arc::make_mut(&mut cfg.devices[0]).timeout = Duration::from_secs(1);
    let c = Collector::start(&cfg);
    c.wait("good readings", |rs| rs.iter().any(|r| r.quality.is_good()))
        .await;
    proxy.set(common::Mode::Blackhole);
    let cut = c.count();
    c.wait("disconnected after the cut", |rs| {
        rs[cut..]
            .iter()
            .any(|r| matches!(&r.quality, Quality::Bad(why) if why.to_string() == "disconnected"))
    })
    .await;
    proxy.set(common::Mode::Forward);
    let healed = c.count();
    c.wait("good readings after the cable is back", |rs| {
        rs[healed..].iter().any(|r| r.quality.is_good())
    })
    .await;
    c.stop().await;
    sim.stop().await;
}

/// The other two policies of the issue, with Sign only and with
/// SignAndEncrypt, on a server whose certificate was trusted beforehand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_policies_sign_and_encrypt() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(&dir.path().join("server-pki"));
    opts.secure_endpoints = true;
    let sim = OpcUaSim::start(opts).await.unwrap();
    let state = dir.path().join("state");
    zgsz_agent::sim::opcua::trust_certificate(&state.join("pki"), &sim.server_certificate_der())
        .unwrap();
    for (policy, mode) in [
        ("Aes128_Sha256_RsaOaep", "Sign"),
        ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
        ("Basic256Sha256", "Sign"),
    ] {
        let cfg = config(
            &state,
            &format!(
                "endpoint = \"{}\"\nsecurity_policy = \"{policy}\"\nsecurity_mode = \"{mode}\"\nroot = \"Machines/m1\"\n\
                 [[devices.tags]]\nname = \"mode\"\npath = \"Monitoring/MachineTool/OperationMode\"\n",
                sim.endpoint()
            ),
        );
        let rows = zgsz_agent::source::opcua::read_once(&cfg.devices[0], Arc::new(SystemClock))
            .await
            .unwrap_or_else(|e| panic!("{policy}/{mode}: {e}"));
        assert!(
            rows[0].reading.quality.is_good(),
            "{policy}/{mode}: {:?}",
            rows[0].reading
        );
    }
    sim.stop().await;
}

/// `browse` and `read` as a commissioning engineer runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browse_and_read_commands() {
    let dir = tempfile::tempdir().unwrap();
    let sim = OpcUaSim::start(options(&dir.path().join("server-pki")))
        .await
        .unwrap();
    sim.hold("m1", true);
    sim.set("m1", "Monitoring/MachineTool/OperationMode", 3i32)
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_zgsz-agent");
    let endpoint = sim.endpoint();
    let pki = dir.path().join("browse-pki");
    let run = |args: Vec<std::ffi::OsString>| async move {
        tokio::task::spawn_blocking(move || std::process::Command::new(bin).args(args).output())
            .await
            .unwrap()
            .unwrap()
    };
    let out = run([
        "browse",
        "--endpoint",
        endpoint.as_str(),
        "--node",
        "Machines/m1",
        "--depth",
        "4",
        "--snippet",
        "--pki",
    ]
    .iter()
    .map(Into::into)
    .chain([pki.clone().into_os_string()])
    .collect())
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("OperationMode"))
        .unwrap_or_else(|| panic!("no OperationMode in:\n{text}"));
    assert!(
        line.contains("Variable Int32")
            && line.contains("s=Machines/m1/Monitoring/MachineTool/OperationMode")
            && line.ends_with("= 3"),
        "{line}"
    );
    assert!(
        text.contains("[[devices.tags]]\nname = \"machine_tool_operation_mode\"\nnode = \"ns="),
        "{text}"
    );

    // The snippet pastes into a config that `read` then reads.
    let snippet: String = text
        .split("[[devices.tags]]")
        .skip(1)
        .find(|t| t.contains("operation_mode"))
        .map(|t| format!("[[devices.tags]]{t}"))
        .unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        format!(
            "[agent]\ngateway_id = \"gw\"\nstate_dir = \"{}\"\n[enterprise]\nname = \"测试\"\nuscc = \"{}\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\nhost = \"127.0.0.1\"\ntls = false\n\
             [[devices]]\nid = \"m1\"\nprotocol = \"opcua\"\nendpoint = \"{endpoint}\"\n{snippet}\n\
             [[devices.tags]]\nname = \"ghost\"\nnode = \"ns=1;s=NoSuchNode\"\n",
            dir.path().join("state").display(),
            common::USCC
        ),
    )
    .unwrap();
    let out = run(["read", "--device", "m1", "--config"]
        .iter()
        .map(Into::into)
        .chain([file.clone().into_os_string()])
        .collect())
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a bad tag exits 1:\n{text}");
    let mode = text
        .lines()
        .find(|l| l.starts_with("machine_tool_operation_mode"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(mode.contains(" 3 ") && mode.contains("good"), "{mode}");
    let ghost = text.lines().find(|l| l.starts_with("ghost")).unwrap();
    assert!(ghost.contains("bad (BadNodeIdUnknown)"), "{ghost}");
    sim.stop().await;
}

/// Under the demo's compressed clock (`demo --speed`) the OPC UA machines
/// report every poll interval of clock time, like the Modbus ones, and
/// their states reach the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opcua_machines_follow_a_compressed_clock() {
    common::logs();
    let common::CompressedDemo {
        clock,
        platform,
        dir,
        mut cfg,
        floor,
    } = common::CompressedDemo::start().await;
    let sim = floor.opcua().unwrap();
    for (id, _, _, _, _) in zgsz_agent::sim::DEMO_OPCUA_MACHINES {
        cfg.set_device_address(id, &sim.endpoint());
    }
    zgsz_agent::sim::opcua::trust_certificate(
        &dir.path().join("pki"),
        &sim.server_certificate_der(),
    )
    .unwrap();
    let agent = zgsz_agent::agent::start(&cfg, clock.clone()).unwrap();
    let ran_nc = |m: &serde_json::Value, id: &str| {
        m["equipment"].as_array().is_some_and(|eq| {
            eq.iter().any(|e| {
                e["id"] == id && e["time_ms"]["running_nc"].as_u64().is_some_and(|t| t > 0)
            })
        })
    };
    platform
        .wait_for(2 * WAIT, "both OPC UA machines running under NC", |p| {
            let m = p.of_kind("metrics");
            m.iter().any(|m| ran_nc(m, "dmg-01")) && m.iter().any(|m| ran_nc(m, "lathe-04"))
        })
        .await;
    agent.stop().await;
}

/// identity = "certificate": an X.509 user certificate the server knows
/// logs in; one it does not know is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_login() {
    use opcua::crypto::{CertificateStore, X509Data};
    use opcua::types::{ApplicationDescription, LocalizedText};
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str| {
        let data = X509Data::from((
            ApplicationDescription {
                application_uri: format!("urn:zgsz-test:{name}").into(),
                application_name: LocalizedText::new("", name),
                ..Default::default()
            },
            None,
        ));
        let (cert, key) = (
            dir.path().join(format!("{name}.der")),
            dir.path().join(format!("{name}.pem")),
        );
        CertificateStore::create_certificate_and_key(&data, true, &cert, &key).unwrap();
        (cert, key)
    };
    let (known_cert, known_key) = make("engineer");
    let (stranger_cert, stranger_key) = make("stranger");
    let mut opts = options(&dir.path().join("server-pki"));
    opts.allow_anonymous = false;
    opts.secure_endpoints = true;
    opts.user_certificates = vec![("engineer".into(), known_cert.clone())];
    let sim = OpcUaSim::start(opts).await.unwrap();
    let state = dir.path().join("state");
    zgsz_agent::sim::opcua::trust_certificate(&state.join("pki"), &sim.server_certificate_der())
        .unwrap();
    let device = |cert: &Path, key: &Path| {
        config(
            &state,
            &format!(
                "endpoint = \"{}\"\nsecurity_policy = \"Basic256Sha256\"\nidentity = \"certificate\"\nuser_certificate = \"{}\"\nuser_private_key = \"{}\"\nroot = \"Machines/m1\"\n\
                 [[devices.tags]]\nname = \"mode\"\npath = \"Monitoring/MachineTool/OperationMode\"\n",
                sim.endpoint(),
                cert.display(),
                key.display()
            ),
        )
        .devices[0]
            .clone()
    };
    let rows = zgsz_agent::source::opcua::read_once(
        &device(&known_cert, &known_key),
        Arc::new(SystemClock),
    )
    .await
    .unwrap_or_else(|e| panic!("registered user certificate: {e}"));
    assert!(rows[0].reading.quality.is_good(), "{:?}", rows[0].reading);
    let err = match zgsz_agent::source::opcua::read_once(
        &device(&stranger_cert, &stranger_key),
        Arc::new(SystemClock),
    )
    .await
    {
        Err(e) => e,
        Ok(_) => panic!("an unknown user certificate was accepted"),
    };
    assert!(
        matches!(err, ConnectError::Login { .. }) && err.to_string().contains("user certificate"),
        "{err}"
    );
    sim.stop().await;
}
