//! A private PostgreSQL cluster for one test: `initdb` into a temporary directory, started with
//! `pg_ctl` on a free port, with or without TLS, stopped and removed when dropped. For tests
//! that need a server configured in a way the shared one (`DATABASE_URL`, 127.0.0.1:5432) must
//! never be changed to, such as `ssl = on` with a certificate of the test's own CA.
//!
//! Blocking (processes). Needs `initdb`, `pg_ctl` (PostgreSQL's server package:
//! `/usr/lib/postgresql/*/bin`, or `PG_BIN`) and `openssl` (a dependency of Debian's
//! PostgreSQL server package). Missing tools fail the test with how to install them, never skip
//! it. `initdb` refuses to run as root: as root, the cluster runs as the `postgres` user.
//!
//! Shared by the store's tests and the `dray` binary's (`#[path]` include): std only.

#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};

/// A CA of the test's own and, when it has server names, a server certificate it signed.
#[derive(Debug)]
pub struct Certs {
    dir: PathBuf,
    /// The CA certificate (PEM): what a client passes as `sslrootcert`.
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl Certs {
    /// A fresh CA and a server certificate for `names` (DNS names or IP addresses), in a
    /// directory of their own, removed on drop.
    pub fn new(names: &[&str]) -> Certs {
        let dir = temp_dir("certs");
        let ca = dir.join("ca.crt");
        let ca_key = dir.join("ca.key");
        let server_cert = dir.join("server.crt");
        let server_key = dir.join("server.key");
        let csr = dir.join("server.csr");
        let ext = dir.join("server.ext");
        let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        // A name of its own: another test CA must not look like this certificate's issuer.
        let ca_name = format!("/CN=dray test CA {}", dir.file_name().and_then(|n| n.to_str()).unwrap_or(""));
        openssl(
            &[&["req", "-x509"][..], &key, &["-days", "2", "-subj", &ca_name]].concat(),
            &[("-keyout", &ca_key), ("-out", &ca)],
        );
        openssl(
            &[&["req"][..], &key, &["-subj", &format!("/CN={}", names[0])]].concat(),
            &[("-keyout", &server_key), ("-out", &csr)],
        );
        let san: Vec<String> = names
            .iter()
            .map(|n| if n.parse::<std::net::IpAddr>().is_ok() { format!("IP:{n}") } else { format!("DNS:{n}") })
            .collect();
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
                san.join(",")
            ),
        )
        .expect("write the extensions file");
        openssl(
            &["x509", "-req", "-days", "2", "-CAcreateserial"],
            &[("-in", &csr), ("-CA", &ca), ("-CAkey", &ca_key), ("-extfile", &ext), ("-out", &server_cert)],
        );
        Certs { dir, ca, server_cert, server_key }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(args: &[&str], paths: &[(&str, &Path)]) {
    let mut command = Command::new("openssl");
    command.args(args);
    for (flag, path) in paths {
        command.arg(flag).arg(path);
    }
    let out = command.output().unwrap_or_else(|e| {
        panic!("cannot run openssl ({e}): install it (Debian: apt-get install openssl) to generate test certificates")
    });
    check(&out, "openssl");
}

/// A running private cluster. Connect as user `postgres` (trust authentication) to database
/// `postgres`, over TCP on 127.0.0.1/::1 (`localhost`) or its Unix socket.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    /// Whether it serves TLS (with the certificate it was started with).
    pub ssl: bool,
}

impl Cluster {
    /// Starts a cluster; with `tls`, `ssl = on` with that server certificate.
    pub fn start(tls: Option<&Certs>) -> Cluster {
        let bin = bin_dir();
        let dir = temp_dir("cluster");
        let data = dir.join("data");
        let as_root = is_root();
        let mut options = format!("-c listen_addresses=localhost -k {} -c fsync=off", dir.display());
        if let Some(certs) = tls {
            // The server refuses a key others may read, or owned by someone else.
            let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
            std::fs::copy(&certs.server_cert, &cert).expect("copy the server certificate");
            std::fs::copy(&certs.server_key, &key).expect("copy the server key");
            set_mode(&key, 0o600);
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                cert.display(),
                key.display()
            ));
        }
        if as_root {
            let out = Command::new("chown").args(["-R", "postgres:"]).arg(&dir).output().expect("chown runs");
            check(&out, "chown the cluster's directory to postgres");
        }
        let run = |tool: &str, args: &[&str]| -> Output {
            let mut command = if as_root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
                c
            } else {
                Command::new(bin.join(tool))
            };
            command.args(args).output().unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
        };
        let data_arg = data.display().to_string();
        let out = run("initdb", &["-D", &data_arg, "-U", "postgres", "-A", "trust", "--no-sync", "--no-instructions"]);
        check(&out, "initdb");
        // Host lines for both plaintext and TLS sessions: each test picks with `sslmode`.
        let hba = "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        // A port free now; another process could take it before the server binds: rare, and
        // then `pg_ctl start` fails and says so.
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
        let options = format!("-p {port} {options}");
        let log = dir.join("server.log").display().to_string();
        let out = run("pg_ctl", &["-D", &data_arg, "-l", &log, "-w", "-t", "60", "-o", &options, "start"]);
        let cluster = Cluster { dir, bin, port, ssl: tls.is_some() };
        if !out.status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("pg_ctl start failed: {}\nserver log:\n{log}", String::from_utf8_lossy(&out.stderr));
        }
        cluster
    }

    /// `postgres://postgres@HOST:PORT/postgres?PARAMS` (no `?` when `params` is empty).
    pub fn url(&self, host: &str, params: &str) -> String {
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        let query = if params.is_empty() { String::new() } else { format!("?{params}") };
        format!("postgres://postgres@{host}:{}/postgres{query}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin.join("pg_ctl"))
        };
        let _ = command.arg("-D").arg(&data).args(["-m", "immediate", "-w", "stop"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where `initdb` and `pg_ctl` are: `PG_BIN`, else the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> PathBuf {
    if let Some(bin) = std::env::var_os("PG_BIN") {
        return PathBuf::from(bin);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists() && bin.join("pg_ctl").exists())
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "this test starts a private PostgreSQL cluster and needs initdb and pg_ctl, found in neither \
             /usr/lib/postgresql/*/bin nor PG_BIN. Install PostgreSQL's server (Debian: apt-get install \
             postgresql), or set PG_BIN to the directory holding initdb and pg_ctl."
        ),
    }
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id(1) runs");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A new directory under the system's temporary directory, readable by its owner only.
fn temp_dir(what: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    let dir = std::env::temp_dir().join(format!("dray-{what}-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    set_mode(&dir, 0o700);
    dir
}

#[track_caller]
fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
