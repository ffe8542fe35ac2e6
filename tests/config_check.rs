//! `zgsz-agent check --config FILE`, run as the real binary: exit codes and
//! the messages an engineer sees on stderr.
//!
//! Every `tests/bad-configs/NAME.toml` is a case; adding a file adds a case.
//! Its sibling `NAME.expect` says what must happen, one item per line:
//!
//! * `# ...` and blank lines are ignored;
//! * `exit = N`: the expected exit code (default 2, "config has errors");
//! * `errors = N` / `warnings = N`: exactly N stderr lines start with
//!   `error: ` / `warning: ` (not checked unless given);
//! * any other line is a substring that must appear in stderr, after
//!   replacing `{file}` with the config path as passed to `--config` and
//!   `{dir}` with its directory (where relative paths in it are resolved).
//!
//! Whatever the `.expect` says, stderr must name the file, a failing check
//! must print nothing on stdout, and a passing one must print `FILE: OK`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test crate: a panic is a failed test, and its helpers are test code too"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zgsz-agent"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run zgsz-agent")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `check` on a config that must pass without a single warning.
fn assert_clean(config: &Path) {
    let out = check(config);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}: check failed\nstderr:\n{stderr}",
        config.display()
    );
    assert!(
        stderr.is_empty(),
        "{}: expected no warnings, got:\n{stderr}",
        config.display()
    );
    assert!(
        stdout.starts_with(&format!("{}: OK (", config.display())),
        "{}: stdout: {stdout}",
        config.display()
    );
}

#[test]
fn example_config_passes_without_warnings() {
    assert_clean(&manifest_dir().join("config/example.toml"));
}

#[test]
fn demo_config_passes_without_warnings() {
    assert_clean(&manifest_dir().join("config/demo.toml"));
}

#[test]
fn relative_config_path_passes() {
    // The path as typed on the command line, relative to the working
    // directory; relative keys inside resolve against the file's directory.
    let out = Command::new(env!("CARGO_BIN_EXE_zgsz-agent"))
        .args(["check", "--config", "config/example.toml"])
        .current_dir(manifest_dir())
        .env_remove("RUST_LOG")
        .output()
        .expect("run zgsz-agent");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("config/example.toml: OK ("));
}

#[test]
fn missing_config_file_exits_2_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no-such-config.toml");
    let out = check(&path);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    assert!(
        stderr.contains(&format!(
            "{}: cannot read the config file: ",
            path.display()
        )),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("; check the path given to --config"),
        "stderr:\n{stderr}"
    );
}

/// What a `.expect` file asks for.
#[derive(Debug)]
struct Expect {
    exit: i32,
    errors: Option<usize>,
    warnings: Option<usize>,
    substrings: Vec<String>,
}

fn parse_expect(path: &Path, config: &Path) -> Expect {
    let body = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: cannot read: {e}", path.display()));
    let dir = config.parent().expect("config has a directory");
    let mut expect = Expect {
        exit: 2,
        errors: None,
        warnings: None,
        substrings: Vec::new(),
    };
    let number = |v: &str| -> usize {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}: {v:?} is not a number", path.display()))
    };
    for line in body.lines().map(str::trim_end) {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(" = ") {
            Some(("exit", v)) => expect.exit = number(v) as i32,
            Some(("errors", v)) => expect.errors = Some(number(v)),
            Some(("warnings", v)) => expect.warnings = Some(number(v)),
            _ => expect.substrings.push(
                line.replace("{file}", &config.display().to_string())
                    .replace("{dir}", &dir.display().to_string()),
            ),
        }
    }
    assert!(
        !expect.substrings.is_empty(),
        "{}: names no substring to look for in stderr",
        path.display()
    );
    expect
}

/// Runs one case; returns a description of every way it failed.
fn run_case(config: &Path, expect_path: &Path) -> Vec<String> {
    let expect = parse_expect(expect_path, config);
    let out = check(config);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let mut failures = Vec::new();
    let mut fail = |what: String| failures.push(what);

    if out.status.code() != Some(expect.exit) {
        fail(format!(
            "exit code {:?}, expected {}",
            out.status.code(),
            expect.exit
        ));
    }
    let file = config.display().to_string();
    if !stderr.contains(&file) {
        fail(format!("stderr does not name the file {file}"));
    }
    if expect.exit == 0 {
        if !stdout.starts_with(&format!("{file}: OK (")) {
            fail(format!("stdout lacks \"{file}: OK\": {stdout:?}"));
        }
    } else if !stdout.is_empty() {
        fail(format!("a failing check printed on stdout: {stdout:?}"));
    }
    for s in &expect.substrings {
        if !stderr.contains(s.as_str()) {
            fail(format!("stderr lacks {s:?}"));
        }
    }
    let count = |prefix: &str| stderr.lines().filter(|l| l.starts_with(prefix)).count();
    if let Some(n) = expect.errors {
        let got = count("error: ");
        if got != n {
            fail(format!("{got} error lines, expected {n}"));
        }
    }
    if let Some(n) = expect.warnings {
        let got = count("warning: ");
        if got != n {
            fail(format!("{got} warning lines, expected {n}"));
        }
    }
    if !failures.is_empty() {
        failures.push(format!("stderr was:\n{stderr}"));
    }
    failures
}

#[test]
fn bad_configs() {
    let dir = manifest_dir().join("tests/bad-configs");
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read tests/bad-configs")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    assert!(
        configs.len() >= 12,
        "only {} cases in {}",
        configs.len(),
        dir.display()
    );

    let mut report = String::new();
    for config in &configs {
        let expect = config.with_extension("expect");
        assert!(
            expect.is_file(),
            "{} has no sibling {}",
            config.display(),
            expect.display()
        );
        let failures = run_case(config, &expect);
        if !failures.is_empty() {
            report.push_str(&format!(
                "\n--- {}\n{}\n",
                config.display(),
                failures.join("\n")
            ));
        }
    }
    // Every case runs before this fails, so one run shows every broken case.
    assert!(report.is_empty(), "bad-config cases failed:{report}");
}

#[test]
fn every_expect_file_has_a_config() {
    let dir = manifest_dir().join("tests/bad-configs");
    for entry in std::fs::read_dir(&dir).expect("read tests/bad-configs") {
        let path = entry.expect("directory entry").path();
        if path.extension().is_some_and(|e| e == "expect") {
            assert!(
                path.with_extension("toml").is_file(),
                "{} has no sibling .toml, so it is never run",
                path.display()
            );
        }
    }
}

#[test]
fn world_readable_password_file_is_warned_about_until_chmod_600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("mqtt.password");
    std::fs::write(&pw, "s3cret\n").expect("write password");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[agent]\ngateway_id = \"gw\"\nstate_dir = \"state\"\n[enterprise]\nname = \"测试\"\nuscc = \"91350100M000100Y43\"\nregion_code = \"321003\"\nindustry = \"discrete\"\n[mqtt]\ntls = false\nusername = \"gw\"\npassword_file = \"mqtt.password\"\n",
    )
    .expect("write config");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = check(&cfg);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains("mqtt.password_file: ")
            && stderr.contains("chmod 600"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "the password leaked: {stderr}");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = check(&cfg);
    assert!(
        !text(&out.stderr).contains("password_file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_tag_count_covers_every_protocol() {
    // Two Modbus TCP tags, one RTU-over-TCP tag, one OPC UA tag and two S7
    // tags: six, of which only three are Modbus.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        r#"[agent]
gateway_id = "gw"
state_dir = "state"
[enterprise]
name = "测试"
uscc = "91350100M000100Y43"
region_code = "321003"
industry = "discrete"
[mqtt]
tls = false

[[devices]]
id = "lathe-01"
address = "127.0.0.1:5020"
[[devices.tags]]
name = "spindle_speed"
area = "holding_register"
address = 0
type = "f32"
[[devices.tags]]
name = "mode"
area = "holding_register"
address = 2
type = "u16"

[[devices]]
id = "mill-02"
protocol = "modbus-rtu-over-tcp"
address = "127.0.0.1:5021"
[[devices.tags]]
name = "mode"
area = "holding_register"
address = 0
type = "u16"

[[devices]]
id = "dmg-01"
protocol = "opcua"
endpoint = "opc.tcp://127.0.0.1:4840"
[[devices.tags]]
name = "mode"
node = "ns=2;s=Channel1.State"

[[devices]]
id = "press-line"
protocol = "s7"
address = "127.0.0.1:102"
rack = 0
slot = 1
[[devices.tags]]
name = "mode"
address = "DB10.DBW0"
type = "int"
[[devices.tags]]
name = "line_speed"
address = "DB10.DBD4"
type = "real"
"#,
    )
    .expect("write config");
    let out = check(&cfg);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("OK (4 device(s), 6 tag(s))"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}
