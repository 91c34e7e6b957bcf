//! TLS to the stores, through rustls with ring (nothing to install in the
//! image): the trust roots, and the three ways a server certificate is
//! checked. Redis's pool gets its TLS from redis-rs; the change-notice
//! subscription and PostgreSQL get a [`ClientConfig`] from here.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How a server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all: the connection is encrypted, but the server could be
    /// anyone (`#insecure`, libpq's `require` without a root certificate).
    Nothing,
    /// Signed by a trusted root; any host name (libpq's `verify-ca`).
    Chain,
    /// Signed by a trusted root and issued for the host connected to.
    Full,
}

/// Makes ring the process's rustls provider; later calls do nothing.
pub fn install_provider() {
    let _ = CryptoProvider::install_default(ring());
}

fn provider() -> Arc<CryptoProvider> {
    install_provider();
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(ring()))
}

// rustls now deprecates ring's provider for lacking post-quantum key
// exchange; aws-lc-rs has it but needs cmake (and a bigger C build) in the
// image. The stores' connections are inside the host's network or to a
// managed store, and a classical exchange is what their clients use today.
#[allow(deprecated)]
fn ring() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The roots to trust: the certificates of the PEM file at `ca_file`, or
/// the system's (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR`).
pub fn roots(ca_file: Option<&Path>) -> Result<RootCertStore, String> {
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
        return roots_from_pem(&pem, path);
    }
    let mut store = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map(|e| format!(" ({e})")).unwrap_or_default();
        return Err(format!("no system CA certificates found{why}; install ca-certificates or name a CA file"));
    }
    Ok(store)
}

/// The certificates of `pem`, the contents of the CA file at `path`.
pub fn roots_from_pem(pem: &[u8], path: &Path) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| format!("the CA file {} is not PEM: {e}", path.display()))?;
        store.add(cert).map_err(|e| format!("the CA file {} holds a bad certificate: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!("the CA file {} holds no certificate", path.display()));
    }
    Ok(store)
}

/// A client configuration that checks servers as `verify` says, against
/// `roots` (unused for [`Verify::Nothing`]).
pub fn client_config(verify: Verify, roots: Option<RootCertStore>) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn ServerCertVerifier> = match verify {
        Verify::Nothing => Arc::new(NoVerification(provider)),
        Verify::Chain | Verify::Full => {
            let roots = roots.ok_or("certificate verification needs trusted roots")?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| e.to_string())?;
            if verify == Verify::Full { webpki } else { Arc::new(AnyHostName(webpki)) }
        }
    };
    Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth())
}

/// Accepts any certificate (the handshake's signatures are still checked,
/// so the session is encrypted to whoever holds the certificate's key).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The chain must lead to a trusted root; the host name is not checked.
/// webpki checks the chain before the name, so a name error means the
/// chain was good.
#[derive(Debug)]
struct AnyHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
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

/// Which store an error comes from, for the hints that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// Redis.
    Redis,
    /// PostgreSQL.
    Postgres,
}

/// A hint for an error text that means a misconfiguration waiting will not
/// heal, to append to it; `None` for anything else.
pub fn hint(store: Store, error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    if e.contains("unknownissuer") || e.contains("unknown issuer") {
        return Some(match store {
            Store::Redis => {
                "the server's certificate is not signed by a trusted CA: name the CA that signed it in PROGRESS_REDIS_CA_FILE"
            }
            Store::Postgres => {
                "the server's certificate is not signed by a trusted CA: name the CA that signed it with sslrootcert in the URL or PGSSLROOTCERT"
            }
        });
    }
    let hints: &[(&[&str], &str)] = &[
        (
            &["notvalidforname", "not valid for name"],
            "the server's certificate was issued for another host name: connect by a name it lists, or use sslmode=verify-ca",
        ),
        (&["certificate expired", "invalid peer certificate: expired"], "the server's certificate has expired"),
        (
            &["server does not support tls", "server does not support ssl"],
            "TLS was required but the server does not offer it: turn ssl on in the server, or use sslmode=prefer / disable",
        ),
        (&["no encryption"], "the server accepts only TLS connections (hostssl): use sslmode=require or stronger"),
        (
            &["corrupt message", "invalidcontenttype", "invalid content type", "wrong version number"],
            "the server does not speak TLS on this port: use redis:// (not rediss://) or the server's TLS port",
        ),
        (
            &["password authentication failed", "wrongpass", "invalid username-password", "invalid password"],
            "wrong user name or password",
        ),
        (
            &["noauth", "authentication required"],
            "the server wants a password: put it in the URL (or REDIS_PASSWORD / PGPASSWORD)",
        ),
        (&["does not exist"], "the database (or user) does not exist: create it, or fix the name in the URL"),
        (
            &[
                "failed to lookup address",
                "name or service not known",
                "no address associated",
                "temporary failure in name resolution",
                "nodename nor servname",
            ],
            "the host name does not resolve: check the host in the URL",
        ),
    ];
    hints.iter().find(|(needles, _)| needles.iter().any(|n| e.contains(n))).map(|(_, hint)| *hint)
}

/// `error` with its hint, when it has one.
pub fn with_hint(store: Store, error: String) -> String {
    match hint(store, &error) {
        Some(hint) if !error.contains(hint) => format!("{error} ({hint})"),
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_what_to_fix() {
        let unknown = "invalid peer certificate: UnknownIssuer";
        assert!(with_hint(Store::Redis, unknown.into()).contains("PROGRESS_REDIS_CA_FILE"));
        assert!(with_hint(Store::Postgres, unknown.into()).contains("sslrootcert"));
        let no_tls = "error performing TLS handshake: server does not support TLS";
        assert!(with_hint(Store::Postgres, no_tls.into()).contains("ssl on"));
        assert!(hint(Store::Postgres, "db error: FATAL: no pg_hba.conf entry for host \"127.0.0.1\", user \"u\", database \"d\", no encryption").unwrap().contains("hostssl"));
        assert!(hint(Store::Redis, "WRONGPASS invalid username-password pair").unwrap().contains("password"));
        assert!(
            hint(Store::Redis, "failed to lookup address information: Name or service not known")
                .unwrap()
                .contains("resolve")
        );
        assert_eq!(
            hint(Store::Redis, "Connection refused (os error 111)"),
            None,
            "a server that is down may come back"
        );
        let once = with_hint(Store::Redis, unknown.into());
        assert_eq!(with_hint(Store::Redis, once.clone()), once, "a hint is added once");
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = std::env::temp_dir().join(format!("progressd-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(roots(Some(&empty)).unwrap_err().contains("no certificate"));
        assert!(roots(Some(&dir.join("missing.pem"))).unwrap_err().contains("cannot read"));
        assert!(client_config(Verify::Full, None).is_err());
        assert!(client_config(Verify::Nothing, None).is_ok());
    }
}
