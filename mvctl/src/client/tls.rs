//! TLS to a daemon on TCP, with Docker's flags and meanings:
//!
//! - `--tls`: encrypt; the server's certificate is not checked (as
//!   `docker --tls`); a client certificate is sent if the files exist;
//! - `--tlsverify` (or `MVM_TLS_VERIFY` set and not `0`): encrypt and check
//!   the server's certificate against `--tlscacert`;
//! - `--tlscacert`, `--tlscert`, `--tlskey`: PEM files, by default `ca.pem`,
//!   `cert.pem` and `key.pem` in `MVM_CERT_PATH` (else `~/.config/mvm/tls`).
//!
//! rustls with ring, PEM parsed by rustls' own parser. The bearer token is
//! sent as before: TLS protects it on the wire.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file is missing or not what it should be.
    #[error("{what} {}: {why}", path.display())]
    File {
        /// Which file.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The TLS flags, after the environment filled the gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// Use TLS.
    pub tls: bool,
    /// Check the server's certificate.
    pub verify: bool,
    /// CA certificate(s) that sign the server's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
}

/// Environment variable: check the server's certificate (Docker's
/// `DOCKER_TLS_VERIFY`).
pub const TLS_VERIFY_ENV: &str = "MVM_TLS_VERIFY";
/// Environment variable: the directory with ca.pem, cert.pem, key.pem.
pub const CERT_PATH_ENV: &str = "MVM_CERT_PATH";

impl TlsOptions {
    /// Whether TLS is on at all.
    pub fn enabled(&self) -> bool {
        self.tls || self.verify
    }

    /// Fill unset file paths from `MVM_CERT_PATH` (or the default
    /// directory) and `verify` from `MVM_TLS_VERIFY`.
    pub fn with_env(mut self) -> Self {
        let verify_env = std::env::var(TLS_VERIFY_ENV)
            .ok()
            .is_some_and(|v| !v.is_empty() && v != "0");
        self.verify |= verify_env;
        if !self.enabled() {
            return self;
        }
        let dir = std::env::var_os(CERT_PATH_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/mvm/tls")));
        if let Some(dir) = dir {
            let pick = |given: Option<PathBuf>, name: &str, required: bool| {
                given.or_else(|| {
                    let p = dir.join(name);
                    (required || p.exists()).then_some(p)
                })
            };
            self.ca = pick(self.ca.take(), "ca.pem", self.verify);
            self.cert = pick(self.cert.take(), "cert.pem", false);
            self.key = pick(self.key.take(), "key.pem", false);
        }
        self
    }

    /// The rustls client configuration.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if self.verify {
            let ca = self.ca.as_ref().ok_or_else(|| TlsError::File {
                what: "CA certificate",
                path: PathBuf::from("ca.pem"),
                why: "--tlsverify needs --tlscacert (or ca.pem in MVM_CERT_PATH)".into(),
            })?;
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "CA certificate")? {
                roots.add(c).map_err(|e| TlsError::File {
                    what: "CA certificate",
                    path: ca.clone(),
                    why: e.to_string(),
                })?;
            }
            builder.with_root_certificates(roots)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        };
        let cfg = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => {
                let key = PrivateKeyDer::from_pem_file(k).map_err(|e| TlsError::File {
                    what: "client key",
                    path: k.clone(),
                    why: e.to_string(),
                })?;
                builder.with_client_auth_cert(certs(c, "client certificate")?, key)?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(c), None) | (None, Some(c)) => {
                return Err(TlsError::File {
                    what: "client certificate or key",
                    path: c.clone(),
                    why: "--tlscert and --tlskey go together".into(),
                })
            }
        };
        Ok(Arc::new(cfg))
    }
}

fn certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |why: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        why,
    };
    let v = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if v.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(v)
}

/// The server name to check a certificate against, from `host:port`.
pub fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    };
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))
}

/// `--tls` without `--tlsverify`: Docker's "encrypt, do not verify". The
/// handshake signatures are still checked (the connection is encrypted to
/// whoever holds the key of the certificate shown), the certificate's
/// identity is not.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_address() {
        assert!(matches!(
            server_name("127.0.0.1:2376").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:2376").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("mvm.example:2376").unwrap(),
            ServerName::DnsName(_)
        ));
    }

    #[test]
    fn verify_needs_a_ca_and_files_are_named() {
        let o = TlsOptions {
            verify: true,
            ..Default::default()
        };
        assert!(o
            .client_config()
            .unwrap_err()
            .to_string()
            .contains("--tlscacert"));
        let o = TlsOptions {
            verify: true,
            ca: Some("/no/such/ca.pem".into()),
            ..Default::default()
        };
        assert!(o
            .client_config()
            .unwrap_err()
            .to_string()
            .contains("/no/such/ca.pem"));
        let o = TlsOptions {
            tls: true,
            cert: Some("/c.pem".into()),
            ..Default::default()
        };
        assert!(o
            .client_config()
            .unwrap_err()
            .to_string()
            .contains("go together"));
        // --tls alone works without any file.
        let o = TlsOptions {
            tls: true,
            ..Default::default()
        };
        o.client_config().unwrap();
    }
}
