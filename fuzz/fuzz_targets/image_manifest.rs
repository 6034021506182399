//! Image manifests, indexes and configs as registries and `load`ed
//! archives give them: parsing never panics, whatever the media type
//! claims; an index's platform choice works on any index that parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvm_images::manifest::{manifest_media_type, parse_config, parse_manifest, ManifestKind};
use mvm_images::ImageConfig;

fuzz_target!(|input: (u8, &[u8])| {
    let (which, data) = input;
    let declared = match which % 5 {
        0 => None,
        1 => Some("application/vnd.oci.image.manifest.v1+json"),
        2 => Some("application/vnd.oci.image.index.v1+json"),
        3 => Some("application/vnd.docker.distribution.manifest.v2+json"),
        _ => Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    };
    if let Ok(ManifestKind::Index(i)) = parse_manifest(data, declared) {
        let _ = i.pick_linux_amd64();
    }
    let _ = manifest_media_type(data);
    if let Ok(cfg) = parse_config(data) {
        let _ = ImageConfig::from_configuration(&cfg);
    }
});
