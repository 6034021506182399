//! Registry credentials, stored the way Docker stores them: the `mvm-auth`
//! crate, re-exported (it lives apart so that `mvctl` can use it without
//! linking this crate's HTTP machinery; see its documentation for the
//! files, credential helpers and lookup order).

pub use mvm_auth::{
    helper, registry_key, same_registry, AuthFile, Credentials, CredentialsError, Found,
    HelperError, Lookup, Removal, Source, CONFIG_ENV, DOCKER_CONFIG_ENV, DOCKER_HUB_KEY,
};
