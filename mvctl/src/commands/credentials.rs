//! The user's registry credentials, as Docker's CLI handles them: kept on
//! this side (mvm's `~/.config/mvm/auth.json`, Docker's
//! `~/.docker/config.json` and the credential helpers they name; see the
//! `mvm-auth` crate), looked up for the registry of each pull or push and
//! sent to mvmd with that request only (`X-Registry-Auth`). mvmd keeps
//! nothing, so the same credentials work with a daemon in the mvm machine
//! or behind `-H tcp://...`.

use mvm_api::auth::{RegistryAuth, RegistryConfig};
use mvm_auth::{registry_key, AuthFile, CredentialsError};

use super::CmdError;

/// Docker Hub as references name it.
pub const DOCKER_HUB: &str = "docker.io";

/// The registry of an image reference, by Docker's rule: the first
/// component is a registry if it has a `.` or `:`, or is `localhost`
/// (`127.0.0.1:5000/app`, `ghcr.io/x/y`); otherwise the image is on Docker
/// Hub (`busybox`, `library/busybox`, `user/app`).
pub fn registry_of(reference: &str) -> String {
    let r = reference.trim();
    match r.split_once('/') {
        Some((first, _))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            match first.to_ascii_lowercase().as_str() {
                "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
                h => h.to_string(),
            }
        }
        _ => DOCKER_HUB.to_string(),
    }
}

/// The credentials file set (mvm's file, Docker's as fallback).
pub fn auth_file() -> Result<AuthFile, CmdError> {
    AuthFile::default_location().map_err(|e| CmdError::Invalid(e.to_string()))
}

/// The `X-Registry-Auth` value for the registry of `reference`, if the
/// user has credentials for it. Problems that do not stop an anonymous
/// pull (a helper that fails, a corrupt Docker file) are warnings.
pub fn header_for(reference: &str) -> Result<Option<String>, CmdError> {
    Ok(auth_for(reference)?.map(|a| a.encode()))
}

/// The `X-Registry-Config` value for a build whose `FROM`s name
/// `references`: the user's credentials for each of their registries (a
/// build pulls base images it lacks, as `docker build` does). `None` when
/// there are none.
pub fn config_header_for(references: &[String]) -> Result<Option<String>, CmdError> {
    let mut config = RegistryConfig::new();
    for r in references {
        if let Some(a) = auth_for(r)? {
            config.insert(registry_key(&registry_of(r)), a);
        }
    }
    Ok((!config.is_empty()).then(|| mvm_api::auth::encode_config(&config)))
}

/// The images a Dockerfile's `FROM` lines name (flags skipped; names made
/// of build args, which only the build knows, left out).
pub fn from_images(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("from")) {
            continue;
        }
        if let Some(image) = words.find(|w| !w.starts_with("--")) {
            let known = !image.contains('$') && !image.eq_ignore_ascii_case("scratch");
            if known && !out.iter().any(|o| o == image) {
                out.push(image.to_string());
            }
        }
    }
    out
}

fn auth_for(reference: &str) -> Result<Option<RegistryAuth>, CmdError> {
    let host = registry_of(reference);
    let file = match AuthFile::default_location() {
        Ok(f) => f,
        Err(CredentialsError::NoHome) => return Ok(None),
        Err(e) => return Err(CmdError::Invalid(e.to_string())),
    };
    let lookup = file
        .lookup(&host)
        .map_err(|e| CmdError::Invalid(e.to_string()))?;
    for w in &lookup.warnings {
        eprintln!("mvctl: warning: credentials for {host}: {w}");
    }
    let Some(found) = lookup.found else {
        return Ok(None);
    };
    let c = found.credentials;
    let server = registry_key(&host);
    let auth = match c.token() {
        Some(t) => RegistryAuth::identity_token(&server, &c.username, t),
        None => RegistryAuth::password(&server, &c.username, &c.password),
    };
    Ok(Some(auth))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_lines_name_the_base_images() {
        let df = "# syntax=x\nFROM --platform=linux/amd64 127.0.0.1:5000/base:1 AS b\n\
                  RUN x\nfrom busybox\nFROM b\nFROM ${BASE}\nFROM scratch\nFROM busybox\n";
        assert_eq!(from_images(df), ["127.0.0.1:5000/base:1", "busybox", "b"]);
    }

    #[test]
    fn registries_of_references() {
        for (r, want) in [
            ("busybox", "docker.io"),
            ("library/busybox:1", "docker.io"),
            ("user/app", "docker.io"),
            ("docker.io/library/busybox", "docker.io"),
            ("index.docker.io/x/y", "docker.io"),
            ("127.0.0.1:5000/app:1", "127.0.0.1:5000"),
            ("localhost/app", "localhost"),
            ("ghcr.io/o/r@sha256:00", "ghcr.io"),
            ("Reg.Example:5000/a", "reg.example:5000"),
        ] {
            assert_eq!(registry_of(r), want, "{r}");
        }
    }
}
