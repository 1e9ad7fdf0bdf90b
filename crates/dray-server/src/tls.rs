//! TLS for the API (`--tls-cert`, `--tls-key`): reads a PEM certificate chain and private key into
//! a rustls server configuration (the `ring` provider, TLS 1.2 and 1.3, HTTP/1.1 by ALPN), and
//! swaps in a new one on SIGHUP. A pair that cannot be used, at start or on reload, is refused
//! with the file at fault named; on reload the pair in use stays.
//!
//! It never touches a connection: `serve.rs` takes the current configuration for each handshake.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{Context, anyhow, bail};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// The certificate in use, replaceable while connections are being accepted.
pub(crate) struct Tls {
    files: TlsFiles,
    current: RwLock<TlsAcceptor>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks both files. Errors name the file: missing or unreadable, holding no
    /// certificate or no private key, or a key that does not belong to the certificate.
    pub fn load(files: &TlsFiles) -> anyhow::Result<Tls> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(files)?));
        Ok(Tls { files: files.clone(), current: RwLock::new(acceptor) })
    }

    /// The configuration to use for a new connection's handshake.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads both files again; on success new handshakes use them, on error the pair in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&self.files)?));
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = acceptor;
        Ok(())
    }
}

fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let (cert_path, key_path) = (&files.cert, &files.key);
    let chain = read_chain(cert_path)?;
    let key = read_key(key_path)?;
    let provider = Arc::new(ring_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider offers no protocol version")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => anyhow!(
                "--tls-key: the private key in {} does not match the certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
            e => anyhow!(
                "--tls-cert/--tls-key: cannot use the certificate in {} with the key in {}: {e}",
                cert_path.display(),
                key_path.display()
            ),
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// rustls on *ring*. rustls 0.23.48 marks it deprecated because *ring* offers no post-quantum key
/// exchange; its alternative, aws-lc-rs, compiles a large C library with cmake for minutes on our
/// 2-core machines. Classical X25519/P-256 key exchange is what most clients negotiate today;
/// revisit when a pure-Rust or cheap post-quantum provider exists.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn read(path: &Path, flag: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

fn read_chain(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = read(path, "--tls-cert")?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("--tls-cert: {} is not valid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        bail!("--tls-cert: {} holds no certificate (a PEM block BEGIN CERTIFICATE)", path.display());
    }
    Ok(chain)
}

fn read_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = read(path, "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "--tls-key: {} holds no private key (a PEM block BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        ),
        e => anyhow!("--tls-key: {} is not valid PEM: {e}", path.display()),
    })
}

/// Reloads `tls` on every SIGHUP until `stop` turns true (or its sender goes).
pub(crate) async fn reload_on_hangup(tls: Arc<Tls>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: the TLS certificate will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|&s| s) => return,
            received = hangup.recv() => if received.is_none() { return },
        }
        match tls.reload() {
            Ok(()) => tracing::info!(
                cert = %tls.files.cert.display(),
                key = %tls.files.key.display(),
                "SIGHUP: reloaded the TLS certificate and key"
            ),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "SIGHUP: cannot reload the TLS certificate; still serving the previous one"
            ),
        }
    }
}
