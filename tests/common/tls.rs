//! Certificates for TLS tests, made with rcgen: a CA of the test's own (in
//! no system root store), a server certificate it signed for `127.0.0.1`
//! and `localhost`, and one for another name (`other.example`) that a
//! verifying client must refuse. The PEM files live in a directory of their
//! own, removed on drop. Also a `redis-server` and a Postgres cluster that
//! speak TLS with those certificates.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

use super::postgres::OwnPostgres;
use super::redis_server::OwnRedis;

/// A certificate and its private key, as PEM text and as files.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA and two server certificates it signed.
pub struct Pki {
    dir: PathBuf,
    /// The CA certificate (PEM), what a client is given to trust.
    pub ca: PathBuf,
    pub ca_pem: String,
    /// SANs `127.0.0.1` (IP) and `localhost` (DNS).
    pub server: Leaf,
    /// SAN `other.example` only: right CA, wrong name.
    pub other: Leaf,
}

impl Pki {
    /// Generates the CA and both leaves and writes them to a fresh directory.
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "progressd-tls-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "progressd test CA");
        ca_params.distinguished_name.push(DnType::OrganizationName, "progressd tests");
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        ca_params.not_before = date_time_ymd(2020, 1, 1);
        ca_params.not_after = date_time_ymd(2099, 1, 1);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &ca_pem).unwrap();
        let server = leaf(&dir, "server", &["127.0.0.1", "localhost"], &issuer);
        let other = leaf(&dir, "other", &["other.example"], &issuer);
        Self { dir, ca, ca_pem, server, other }
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate's path as a string, for environment variables and URLs.
    pub fn ca_path(&self) -> String {
        self.ca.to_str().unwrap().to_owned()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn leaf(dir: &Path, name: &str, sans: &[&str], issuer: &Issuer<'_, KeyPair>) -> Leaf {
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, sans[0]);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2099, 1, 1);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, &key_pem).unwrap();
    Leaf { cert_pem, key_pem, cert: cert_path, key: key_path }
}

/// A `redis-server` of this test's own with a TLS port serving `leaf`
/// (clients need not present a certificate). Its plain port stays open on
/// 127.0.0.1 for the test's own checks and start-up probe; progressd is
/// only ever pointed at the TLS port.
pub struct TlsRedis {
    pub redis: OwnRedis,
    pub tls_port: u16,
}

impl TlsRedis {
    pub fn start(pki: &Pki, leaf: &Leaf) -> Self {
        Self::start_with(pki, leaf, &[])
    }

    /// With extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(pki: &Pki, leaf: &Leaf, extra: &[&str]) -> Self {
        let tls_port = super::binary::free_port();
        let port = tls_port.to_string();
        let (cert, key, ca) = (leaf.cert.to_str().unwrap(), leaf.key.to_str().unwrap(), pki.ca.to_str().unwrap());
        let mut args = vec![
            "--tls-port",
            &port,
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
        ];
        args.extend_from_slice(extra);
        let redis = OwnRedis::start_with(&args);
        wait_for_port(tls_port);
        Self { redis, tls_port }
    }

    /// `rediss://127.0.0.1:TLS_PORT`
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }

    /// `redis://127.0.0.1:PLAIN_PORT`, for the test's own checks only.
    pub fn plain_url(&self) -> String {
        self.redis.url()
    }
}

fn wait_for_port(port: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "redis-server's TLS port {port} does not accept connections");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A private Postgres cluster with `ssl = on` serving `leaf`, whose
/// pg_hba.conf lets TCP clients in over TLS only (`hostssl`) and the test
/// itself in over the Unix socket (`local`, see
/// [`OwnPostgres::connect_local`]).
pub fn tls_postgres(leaf: &Leaf) -> OwnPostgres {
    let mut pg = OwnPostgres::start();
    enable_tls(&mut pg, leaf);
    pg
}

/// Turns TLS on in a running cluster and restarts it.
pub fn enable_tls(pg: &mut OwnPostgres, leaf: &Leaf) {
    let cert = pg.install_file("server.crt", leaf.cert_pem.as_bytes(), 0o644);
    let key = pg.install_file("server.key", leaf.key_pem.as_bytes(), 0o600);
    pg.append_conf(&format!("ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n", cert.display(), key.display()));
    pg.set_hba("local all all trust\nhostssl all all 127.0.0.1/32 trust\n");
    pg.restart();
}
