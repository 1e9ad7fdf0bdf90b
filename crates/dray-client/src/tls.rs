//! The client's TLS (feature `tls`): rustls on the `ring` provider, verifying servers against the
//! system's roots plus any CA certificates the caller gives. Built per [`Client`](crate::Client),
//! never installed process-wide.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::error::Error;

/// A rustls client configuration trusting the system's roots and the certificates in `ca_pem`.
pub(crate) fn client_config(ca_pem: &[Vec<u8>]) -> Result<rustls::ClientConfig, Error> {
    let mut extra: Vec<CertificateDer<'static>> = Vec::new();
    for pem in ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::invalid("ca_certificates", format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::invalid("ca_certificates", "holds no certificate (a PEM block BEGIN CERTIFICATE)"));
        }
        extra.extend(certs);
    }
    let provider = Arc::new(ring_provider());
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(provider.clone())
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
    }
    .map_err(|e| Error::invalid("ca_certificates", format!("cannot set up certificate verification: {e}")))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid("client", format!("TLS: {e}")))?
        .dangerous() // only to plug in the platform verifier: verification stays on
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(config)
}

/// rustls on *ring*: deprecated in rustls 0.23.48 for lacking post-quantum key exchange, but its
/// alternative (aws-lc-rs) builds a large C library for minutes, in every application that uses
/// this SDK. Revisit when a cheap post-quantum provider exists.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
