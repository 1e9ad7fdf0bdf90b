//! The packaging files at the repository's root and in `deploy/`, checked against the binary they
//! package (issue #18): the `Dockerfile` (multi-stage, non-root, a data volume, a health check that
//! really works with this binary) and the systemd unit (`systemd-analyze verify`, hardening).
//!
//! No container is built here: this machine reaches no container registry (the `rust` and
//! `debian` base images cannot be pulled), so the image build itself is left to CI systems that
//! can; what can be checked without one is checked.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{BIN, ServeProcess};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Dockerfile's instructions, continuation lines joined and comments dropped:
/// `(INSTRUCTION, arguments)`.
fn dockerfile() -> Vec<(String, String)> {
    let text = read("Dockerfile");
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => current.push_str(head),
            None => {
                current.push_str(line);
                let (word, rest) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
                instructions.push((word.to_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    instructions
}

/// `KEY=value` pairs of the `ENV` instructions.
fn env_of(instructions: &[(String, String)]) -> BTreeMap<String, String> {
    instructions
        .iter()
        .filter(|(word, _)| word == "ENV")
        .flat_map(|(_, rest)| rest.split_whitespace().filter_map(|pair| pair.split_once('=')))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

/// A JSON-array instruction argument (`["dray", "health"]`) as words.
fn exec_form(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not an exec-form array ({e}): {text}"))
}

#[test]
fn dockerfile_is_multi_stage_non_root_with_a_volume_and_a_working_health_check() {
    let instructions = dockerfile();
    let froms: Vec<&str> = instructions.iter().filter(|(w, _)| w == "FROM").map(|(_, r)| r.as_str()).collect();
    assert_eq!(froms, ["${RUST_IMAGE} AS build", "${RUNTIME_IMAGE} AS runtime"], "two stages");
    let args: BTreeMap<&str, &str> =
        instructions.iter().filter(|(w, _)| w == "ARG").filter_map(|(_, r)| r.split_once('=')).collect();
    // The builder's toolchain is the one the workspace asks for.
    let manifest = read("Cargo.toml");
    let rust_version = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .expect("rust-version in Cargo.toml")
        .trim_matches('"');
    assert!(args["RUST_IMAGE"].starts_with(&format!("rust:{rust_version}-")), "{args:?}");
    assert!(args["RUNTIME_IMAGE"].starts_with("debian:") && args["RUNTIME_IMAGE"].ends_with("-slim"), "{args:?}");

    // The runtime stage: after its FROM, the binary comes from the build stage, the user is not
    // root, and nothing runs as root after USER.
    let runtime = instructions.iter().position(|(w, r)| w == "FROM" && r.ends_with("AS runtime")).unwrap();
    let stage = &instructions[runtime..];
    assert!(stage.iter().any(|(w, r)| w == "COPY" && r.starts_with("--from=build ")), "{stage:?}");
    let user = stage.iter().position(|(w, _)| w == "USER").expect("a USER");
    assert!(!["root", "0", "root:root", "0:0"].contains(&stage[user].1.as_str()), "{:?}", stage[user]);
    assert!(!stage[user..].iter().any(|(w, _)| w == "RUN"), "RUN after USER");
    let adds_user = stage
        .iter()
        .any(|(w, r)| w == "RUN" && r.contains("useradd") && r.contains(&stage[user].1.replace(":dray", "")));
    assert!(adds_user, "the stage creates its user");

    // The data directory is the volume; the listen port is exposed.
    let env = env_of(stage);
    let volume = exec_form(&stage.iter().find(|(w, _)| w == "VOLUME").expect("a VOLUME").1);
    assert_eq!(volume, [env["DRAY_DATA_DIR"].clone()]);
    let port = env["DRAY_LISTEN"].rsplit_once(':').unwrap().1;
    assert!(stage.iter().any(|(w, r)| w == "EXPOSE" && r == port), "EXPOSE {port}");
    assert!(env["DRAY_SERVER"].ends_with(&format!(":{port}")), "the health check asks the listen port: {env:?}");
    // Every DRAY_* variable set is one the binary reads.
    let help = [
        Command::new(BIN).args(["--help"]).output().unwrap().stdout,
        Command::new(BIN).args(["serve", "--help"]).output().unwrap().stdout,
    ]
    .concat();
    let help = String::from_utf8(help).unwrap();
    for key in env.keys() {
        assert!(help.contains(&format!("env: {key}=")), "{key} is not an option of dray");
    }

    let entrypoint = exec_form(&stage.iter().find(|(w, _)| w == "ENTRYPOINT").unwrap().1);
    let cmd = exec_form(&stage.iter().find(|(w, _)| w == "CMD").unwrap().1);
    assert_eq!((entrypoint.as_slice(), cmd.as_slice()), (&["dray".to_owned()][..], &["serve".to_owned()][..]));

    // The health check's command, run with this binary against a real server (as the image would
    // with its DRAY_SERVER), succeeds; against nothing it fails.
    let healthcheck = &stage.iter().find(|(w, _)| w == "HEALTHCHECK").expect("a HEALTHCHECK").1;
    let probe = exec_form(healthcheck.split_once("CMD ").expect("HEALTHCHECK ... CMD [...]").1);
    assert_eq!(probe[..2], ["dray", "health"], "{probe:?}");
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(&dir.path().join("data"));
    let healthy = Command::new(BIN).args(&probe[1..]).env("DRAY_SERVER", &server.url).output().unwrap();
    assert!(healthy.status.success(), "{}", String::from_utf8_lossy(&healthy.stderr));
    assert!(server.terminate().success());
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let unhealthy = Command::new(BIN).args(&probe[1..]).env("DRAY_SERVER", &url).output().unwrap();
    assert_eq!(unhealthy.status.code(), Some(6));

    // The build context leaves out build output and repository metadata.
    let ignore = read(".dockerignore");
    for pattern in ["target", ".git", "**/node_modules"] {
        assert!(ignore.lines().any(|line| line.trim() == pattern), ".dockerignore lacks {pattern}");
    }
}

#[test]
fn systemd_unit_verifies_and_is_hardened() {
    let unit = read("deploy/systemd/dray.service");
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=dray",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "Environment=DRAY_DATA_DIR=/var/lib/dray",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.lines().any(|line| line == setting), "the unit lacks {setting}");
    }
    // Not ProcSubset=pid: the default memory budget reads /proc/meminfo.
    assert!(!unit.contains("\nProcSubset=pid"), "ProcSubset=pid hides /proc/meminfo");
    assert!(unit.contains("\nExecStart=/usr/local/bin/dray serve\n"));

    // `systemd-analyze verify` on the unit with ExecStart pointing at this build, and the man
    // pages its Documentation= names generated by this build: no error and no warning.
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man");
    let status = Command::new(BIN).args(["man", "--dir"]).arg(man.join("man1")).output().unwrap();
    assert!(status.status.success());
    let path = dir.path().join("dray.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/dray", BIN)).unwrap();
    let verify = match Command::new("systemd-analyze").arg("verify").arg(&path).env("MANPATH", &man).output() {
        Ok(output) => output,
        Err(e) => panic!("systemd-analyze cannot run ({e}): install it with `apt-get install systemd`"),
    };
    let stderr = String::from_utf8_lossy(&verify.stderr);
    // Outside a systemd-booted machine it may add a note about the bus; anything about our file is a
    // finding.
    let findings: Vec<&str> = stderr.lines().filter(|line| line.contains("dray.service")).collect();
    assert!(verify.status.success() && findings.is_empty(), "systemd-analyze verify: {stderr}");
}
