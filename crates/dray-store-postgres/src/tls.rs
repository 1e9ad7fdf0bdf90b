//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert` semantics, on rustls (ring).
//!
//! tokio-postgres negotiates TLS (the `SSLRequest` exchange, `disable`/`prefer`/`require`) and
//! hands the socket to a [`MakeTlsConnect`] for the handshake; this module is that handshake,
//! and the certificate check each mode asks for:
//!
//! | `sslmode` | encrypted | certificate chain checked | host name checked |
//! |---|---|---|---|
//! | `disable` | never | - | - |
//! | `prefer` | if the server offers it | no | no |
//! | `require` | always | only with `sslrootcert` (then as `verify-ca`) | no |
//! | `verify-ca` | always | yes | no |
//! | `verify-full` | always | yes | yes |
//!
//! The driver only knows the first three, so [`split_url`] takes `verify-ca`, `verify-full`
//! and `sslrootcert` out of the connection string (leaving `sslmode=require`, which makes the
//! driver insist on TLS) before the driver parses it. It never reads files; [`Tls::new`] does.
//!
//! Channel binding (`SCRAM-SHA-256-PLUS`) is not offered: the connection authenticates with
//! plain SCRAM inside the TLS session, as libpq does with `channel_binding=prefer` when the
//! client cannot bind.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dray_core::Invalid;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

/// libpq's `sslmode`, all five values this store supports (`allow` is not one of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, Invalid> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Invalid::new(
                    "url",
                    format!("sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"),
                ));
            }
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the certificate authorities for `verify-ca`/`verify-full` come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCert {
    /// A PEM file of one or more CA certificates (`sslrootcert=FILE`).
    File(PathBuf),
    /// The operating system's CA bundle (`sslrootcert=system`, as in libpq 16).
    System,
}

/// The TLS settings of a connection string, after [`split_url`]: the mode in effect (libpq's
/// rules applied) and the CAs, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TlsParams {
    pub(crate) mode: SslMode,
    pub(crate) root_cert: Option<RootCert>,
}

/// Splits a connection string (URL or `key=value` form) into what tokio-postgres can parse and
/// the TLS settings it cannot: `sslmode=verify-ca|verify-full` becomes `sslmode=require`,
/// `sslrootcert` is removed. libpq's rules, except that no `sslmode` means `disable` (libpq:
/// `prefer`; see below); `require` with an
/// `sslrootcert` verifies the chain (`verify-ca`); `sslrootcert=system` defaults to
/// `verify-full` and refuses anything weaker.
pub(crate) fn split_url(url: &str) -> Result<(String, TlsParams), Invalid> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, Invalid> {
        match key {
            "sslmode" => mode = Some(SslMode::parse(value)?),
            "sslrootcert" if value.is_empty() => {
                return Err(Invalid::new("url", "sslrootcert is empty; name a PEM file of CA certificates"));
            }
            "sslrootcert" if value == "system" => root_cert = Some(RootCert::System),
            "sslrootcert" => root_cert = Some(RootCert::File(PathBuf::from(value))),
            _ => return Ok(false),
        }
        Ok(true)
    };
    let mut rest = match url.split_once("://") {
        Some((scheme, after)) => {
            let (base, query) = after.split_once('?').unwrap_or((after, ""));
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if !take(&percent_decode(key), &percent_decode(value))? {
                    kept.push(pair);
                }
            }
            UrlForm::Url { head: format!("{scheme}://{base}"), kept }
        }
        None => {
            let mut kept = Vec::new();
            for (key, value, span) in key_values(url)? {
                if !take(&key, &value)? {
                    kept.push(span);
                }
            }
            UrlForm::KeyValue { kept }
        }
    };
    let mode = match (mode, &root_cert) {
        (None, Some(RootCert::System)) => SslMode::VerifyFull,
        (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
            return Err(Invalid::new(
                "url",
                format!("sslrootcert=system needs sslmode=verify-full (or no sslmode), not sslmode={}", m.as_str()),
            ));
        }
        // Not libpq's `prefer` yet: TLS only when the URL asks for it, until every PostgreSQL
        // test has run over TLS (doing so found the LISTEN connection spinning on a failed TLS
        // stream after its backend was terminated; fixed in dray-server's listen.rs).
        (None, _) => SslMode::Disable,
        (Some(SslMode::Require), Some(_)) => SslMode::VerifyCa,
        (Some(m), _) => m,
    };
    // What the driver must do: never, try, or insist on TLS.
    let driver_mode = match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
    };
    let stripped = match &mut rest {
        UrlForm::Url { head, kept } => {
            let sslmode = format!("sslmode={driver_mode}");
            kept.push(&sslmode);
            format!("{head}?{}", kept.join("&"))
        }
        UrlForm::KeyValue { kept } => {
            let mut s = kept.join(" ");
            s.push_str(&format!(" sslmode={driver_mode}"));
            s
        }
    };
    Ok((stripped, TlsParams { mode, root_cert }))
}

enum UrlForm<'a> {
    Url { head: String, kept: Vec<&'a str> },
    KeyValue { kept: Vec<&'a str> },
}

/// `%XX` escapes of a URL's query (`+` stays `+`, as libpq reads it).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key = value` pairs of a libpq keyword/value string, each with its original text. Values
/// may be single-quoted; a backslash escapes the next character.
fn key_values(s: &str) -> Result<Vec<(String, String, &str)>, Invalid> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return Err(Invalid::new("url", format!("expected = after {key:?} in the connection string")));
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut closed = !quoted;
        while let Some((_, c)) = chars.next_if(|(_, c)| quoted || !c.is_whitespace()) {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed {
            return Err(Invalid::new("url", format!("unterminated quoted value of {key:?} in the connection string")));
        }
        let end = chars.peek().map_or(s.len(), |&(i, _)| i);
        out.push((key, value, &s[start..end]));
    }
    Ok(out)
}

/// The TLS connector every connection of the store uses (pool, migrations, leader election, the
/// server's LISTEN connection): rustls configured for one [`TlsParams`]. Cheap to clone.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ClientConfig>,
    /// `verify-full`: the name the client connects to must be one the certificate names.
    name_checked: bool,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("name_checked", &self.name_checked).finish_non_exhaustive()
    }
}

/// Why TLS could not be set up before connecting: the CA certificates cannot be read or used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl Tls {
    /// Reads the CA certificates `params` names (`verify-ca`/`verify-full` without
    /// `sslrootcert`: `~/.postgresql/root.crt`, as libpq) and builds the connector.
    pub(crate) fn new(params: &TlsParams) -> Result<Tls, TlsError> {
        // ring, not rustls's default aws-lc-rs: no long C/CMake build for the one binary. rustls
        // 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; classical
        // ECDHE is what libpq and the managed services negotiate today. Revisit (the
        // `aws_lc_rs` feature) when a hybrid key exchange matters for database traffic.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match params.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => {
                Arc::new(EncryptOnly(provider.signature_verification_algorithms))
            }
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(roots(params)?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| TlsError(format!("cannot use the CA certificates: {e}")))?;
                if params.mode == SslMode::VerifyFull { webpki } else { Arc::new(ChainOnly(webpki)) }
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS protocol versions: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Tls { config: Arc::new(config), name_checked: params.mode == SslMode::VerifyFull })
    }
}

fn roots(params: &TlsParams) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    let (certs, from) = match &params.root_cert {
        Some(RootCert::System) => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
                return Err(TlsError(format!(
                    "sslrootcert=system: no CA certificates found in the system's store ({})",
                    errors.join("; ")
                )));
            }
            (found.certs, "the system's CA store".to_owned())
        }
        Some(RootCert::File(path)) => (read_pem(path)?, path.display().to_string()),
        None => {
            let home = std::env::var_os("HOME").unwrap_or_default();
            let path = Path::new(&home).join(".postgresql/root.crt");
            if !path.exists() {
                return Err(TlsError(format!(
                    "sslmode={} needs the CA certificates to check the server against: add sslrootcert=FILE \
                     (a PEM file) or sslrootcert=system to the database URL ({} does not exist)",
                    params.mode.as_str(),
                    path.display()
                )));
            }
            (read_pem(&path)?, path.display().to_string())
        }
    };
    let (added, _ignored) = store.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError(format!("sslrootcert {from}: no usable CA certificate in it")));
    }
    Ok(store)
}

fn read_pem(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let unreadable = |e: &dyn fmt::Display| TlsError(format!("sslrootcert {}: cannot be read: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| unreadable(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(TlsError(format!("sslrootcert {}: no PEM certificate in it", path.display())));
    }
    Ok(certs)
}

/// `require` and `prefer`: encrypts, and checks that the server holds the key of the certificate
/// it presents, but not who signed it nor for whom (libpq's meaning of these modes).
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the full check, except that a certificate for another name passes (webpki checks
/// the name last, so that error means the chain, validity and usage were all fine).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

impl<S> MakeTlsConnect<S> for Tls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = TlsConnector;
    type Error = TlsError;

    fn make_tls_connect(&mut self, host: &str) -> Result<TlsConnector, TlsError> {
        let name = match ServerName::try_from(host.to_owned()) {
            Ok(name) => name,
            Err(_) if self.name_checked => {
                return Err(TlsError(format!("sslmode=verify-full: {host:?} is not a host name to check")));
            }
            // Not checked: any name will do (it only becomes SNI).
            Err(_) => ServerName::try_from("localhost").expect("a valid name"),
        };
        Ok(TlsConnector { config: self.config.clone(), name })
    }
}

/// One connection's handshake (see [`Tls`]).
pub struct TlsConnector {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<S> TlsConnect<S> for TlsConnector
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move { Ok(TlsStream(connector.connect(self.name, stream).await?)) })
    }
}

/// A TLS session to the server.
#[derive(Debug)]
pub struct TlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, stripped: &str, mode: SslMode, root: Option<RootCert>) {
        let (s, params) = split_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!((s.as_str(), params.mode, params.root_cert), (stripped, mode, root), "{url}");
        s.parse::<tokio_postgres::Config>().unwrap_or_else(|e| panic!("{stripped}: {e}"));
    }

    #[test]
    fn urls() {
        use SslMode::*;
        let file = |p: &str| Some(RootCert::File(PathBuf::from(p)));
        check("postgres://u@h/db", "postgres://u@h/db?sslmode=disable", Disable, None);
        check("postgres://u@h/db?sslmode=prefer", "postgres://u@h/db?sslmode=prefer", Prefer, None);
        check("postgres://u@h/db?sslmode=disable", "postgres://u@h/db?sslmode=disable", Disable, None);
        check(
            "postgres://u@h/db?sslmode=require&connect_timeout=3",
            "postgres://u@h/db?connect_timeout=3&sslmode=require",
            Require,
            None,
        );
        check(
            "postgresql://u@h:5/db?application_name=a&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca%20x.pem",
            "postgresql://u@h:5/db?application_name=a&sslmode=require",
            VerifyFull,
            file("/tmp/ca x.pem"),
        );
        check("postgres://h?sslmode=verify-ca", "postgres://h?sslmode=require", VerifyCa, None);
        // libpq: require with a root certificate verifies the chain.
        check(
            "postgres://h/d?sslrootcert=ca.pem&sslmode=require",
            "postgres://h/d?sslmode=require",
            VerifyCa,
            file("ca.pem"),
        );
        check(
            "postgres://h/d?sslrootcert=system",
            "postgres://h/d?sslmode=require",
            VerifyFull,
            Some(RootCert::System),
        );
        check("host=h user=u", "host=h user=u sslmode=disable", Disable, None);
        check(
            "host=h sslmode = verify-full sslrootcert='/a b/c\\'d.pem' dbname=x",
            "host=h dbname=x sslmode=require",
            VerifyFull,
            file("/a b/c'd.pem"),
        );
        check("password='a b' sslmode=disable", "password='a b' sslmode=disable", Disable, None);
    }

    #[test]
    fn bad_tls_settings_name_the_problem() {
        for (url, message) in [
            ("postgres://h/d?sslmode=allow", "sslmode=allow is not one of"),
            ("postgres://h/d?sslmode=verify_full", "sslmode=verify_full is not one of"),
            ("sslmode=bogus", "sslmode=bogus is not one of"),
            ("postgres://h/d?sslrootcert=", "sslrootcert is empty"),
            ("postgres://h/d?sslrootcert=system&sslmode=require", "sslrootcert=system needs sslmode=verify-full"),
            ("host=h sslrootcert='x", "unterminated quoted value"),
        ] {
            let e = split_url(url).expect_err(url);
            assert_eq!(e.field, "url");
            assert!(e.message.contains(message), "{url}: {e}");
        }
    }

    #[test]
    fn unreadable_root_certificates_are_named() {
        let missing =
            TlsParams { mode: SslMode::VerifyFull, root_cert: Some(RootCert::File("/nonexistent/ca.pem".into())) };
        let e = Tls::new(&missing).unwrap_err().to_string();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem: cannot be read"), "{e}");
        let dir = std::env::temp_dir().join(format!("dray-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = Tls::new(&TlsParams { mode: SslMode::VerifyCa, root_cert: Some(RootCert::File(empty.clone())) })
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        // Encrypt-only modes read nothing.
        assert!(Tls::new(&TlsParams { mode: SslMode::Require, root_cert: None }).is_ok());
    }
}
