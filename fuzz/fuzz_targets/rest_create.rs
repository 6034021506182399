//! `POST /v1/sandboxes` bodies (and an image's config, hostile too) through
//! everything mvmd does before a VMM exists: JSON, the conversion to the
//! runtime's request, Docker's merge rules and the checks against the host,
//! then the launch spec guest init will read. What mvmd accepts, init must
//! accept: a resolved request whose launch spec fails validation is a bug
//! (the sandbox would fail at boot instead of at the API).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_api::sandbox::CreateRequest;
use mvm_images::ImageConfig;
use mvm_runtime::launch::{launch_spec, Stdio};
use mvm_runtime::spec::{resolve, Defaults};
use mvm_runtime::HostResources;

fuzz_target!(|data: &[u8]| {
    // The body, a NUL, the image's config (JSON has no raw NUL).
    let (body, image) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(req) = serde_json::from_slice::<CreateRequest>(body) else {
        return;
    };
    let image: ImageConfig = serde_json::from_slice(image).unwrap_or_else(|_| ImageConfig {
        cmd: vec!["/bin/sh".into()],
        ..ImageConfig::default()
    });
    let host = HostResources {
        cpus: 2,
        mem_total_mib: 4096,
        mem_available_mib: 2048,
    };
    // Mount specs are checked here (hostile paths, options).
    let Ok(r) = mvmd::convert::sandbox_request(&req) else {
        return;
    };
    let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let Ok(resolved) = resolve(&r, &image, id, &Defaults::default(), &host) else {
        return;
    };
    let spec = launch_spec(
        &resolved.process,
        &resolved.hostname,
        Stdio {
            agent: true,
            size: None,
        },
    );
    if let Err(e) = spec.validate() {
        panic!("mvmd accepted {req:?} over {image:?}, but init would refuse its launch spec: {e}");
    }
});
