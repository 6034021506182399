//! `login` (check credentials against the registry, then save them) and
//! `logout`.

use reqwest::Method;

use super::client::{Client, NotFound, Retry, Scope};
use super::credentials::{AuthFile, Credentials};
use super::host::{self, RegistryHost};
use super::progress::NoProgress;
use super::{blocking, LoginOptions, RegistryError};

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Verifies `creds` against the registry at `host` (`GET /v2/` with the
/// authentication the registry asks for, as `docker login` does) and
/// saves them in `auth_file`. Returns the normalised host name the
/// credentials are stored for. Nothing is saved if the registry refuses
/// them or cannot be reached.
pub async fn login(
    host: &str,
    creds: &Credentials,
    opts: &LoginOptions,
    auth_file: &AuthFile,
) -> Result<String> {
    let name = check_login(host, creds, opts).await?;
    let file = auth_file.clone();
    let (key, creds) = (name.clone(), creds.clone());
    blocking(move || Ok(file.store(&key, &creds)?)).await?;
    Ok(name)
}

/// Verifies `creds` against the registry at `host` as [`login`] does, and
/// stores nothing: for a daemon, which checks credentials on behalf of a
/// client that keeps them. Returns the normalised host name.
pub async fn check_login(host: &str, creds: &Credentials, opts: &LoginOptions) -> Result<String> {
    creds.validate()?;
    let host = RegistryHost::new(host, opts.insecure, &opts.insecure_registries)?;
    let name = host.name().to_string();
    let client = Client::new(host, Some(creds.clone()), opts.retry)?;
    let url = client.ping_url();
    let what = "GET /v2/".to_string();
    let resp = client
        .send(&what, &Scope::None, Retry::Idempotent, &NoProgress, &|_| {
            client.request(Method::GET, &url)
        })
        .await?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let err = client
            .status_error(resp, &what, &Scope::None, NotFound::Other)
            .await;
        return Err(match status {
            404 => RegistryError::Protocol {
                host: name,
                message: "GET /v2/ answered 404: this is not a container registry (OCI distribution API); check the host and port".into(),
            },
            _ => err,
        });
    }
    Ok(name)
}

/// Removes the saved credentials for `host` from `auth_file`. Returns
/// false if there were none. Docker's file, read as a fallback, is never
/// changed.
pub fn logout(host: &str, auth_file: &AuthFile) -> Result<bool> {
    let name = host::normalize(host)?;
    Ok(!auth_file.remove(&name)?.removed.is_empty())
}
