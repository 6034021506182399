//! The fuzz targets' bodies, one function per target, each taking the raw
//! bytes libFuzzer hands over. Two drivers call them: the libFuzzer
//! binaries in `fuzz/libfuzzer/` (nightly, AddressSanitizer, `make fuzz`),
//! and the replay test (`fuzz/tests/replay.rs`, stable, part of `make
//! test`'s unit phase), which runs every target over its seeds, its
//! stored corpus and pseudo-random inputs. Keeping the bodies here means
//! the targets build with the workspace on every change and what the
//! fuzzer found once is checked again on every run, without a second,
//! instrumented build of every dependency in `make test`.
//!
//! Each function states its oracle: no panic anywhere, plus a property
//! where one exists.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::PathBuf;

use arbitrary::{Arbitrary, Unstructured};
use mvm_api::sandbox::CreateRequest;
use mvm_builder::dockerfile::{parse, shell};
use mvm_images::manifest::{manifest_media_type, parse_config, parse_manifest, ManifestKind};
use mvm_images::{ImageConfig, Reference};
use mvm_protocol::agent::frame::{decode_json, FrameReader};
use mvm_protocol::agent::message::{Request, Response};
use mvm_protocol::launch::LaunchSpec;
use mvm_runtime::launch::{launch_spec, Stdio};
use mvm_runtime::spec::{resolve, Defaults};
use mvm_runtime::HostResources;
use mvm_unpack::{sanitize, unpack, Options, Stats};
use mvm_virtio::block::{Block, BlockConfig};
use mvm_virtio::net::{Net, NetConfig, Tap, TapSource};
use mvm_virtio::rng::Rng;
use mvm_virtio::vsock::{Vsock, VsockConfig};

use crate::fence::Fence;
use crate::mmio::{drive, HostSide, NoHost, Op};

/// A target: its name (the libFuzzer binary's and the corpus directory's)
/// and its body.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

/// Every target, in the order `make fuzz` runs them.
pub const ALL: &[Target] = &[
    Target {
        name: "virtio_block",
        run: virtio_block,
    },
    Target {
        name: "virtio_net",
        run: virtio_net,
    },
    Target {
        name: "virtio_vsock",
        run: virtio_vsock,
    },
    Target {
        name: "mmio_transport",
        run: mmio_transport,
    },
    Target {
        name: "agent_frames",
        run: agent_frames,
    },
    Target {
        name: "launch_spec",
        run: launch_spec_json,
    },
    Target {
        name: "layer_unpack",
        run: layer_unpack,
    },
    Target {
        name: "cp_extract",
        run: cp_extract,
    },
    Target {
        name: "dockerfile",
        run: dockerfile,
    },
    Target {
        name: "image_reference",
        run: image_reference,
    },
    Target {
        name: "image_manifest",
        run: image_manifest,
    },
    Target {
        name: "rest_create",
        run: rest_create,
    },
];

/// The structured input libfuzzer-sys's `fuzz_target!` would derive from
/// these bytes (the same size check and `arbitrary_take_rest`), so that a
/// corpus means the same thing to both drivers.
fn typed<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    if data.len() < T::size_hint(0).0 {
        return None;
    }
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// virtio-blk: a hostile guest's register accesses, rings, descriptor
/// chains and request headers against a real disk file.
pub fn virtio_block(data: &[u8]) {
    let Some((read_only, ops)) = typed::<(bool, Vec<Op>)>(data) else {
        return;
    };
    let mut file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
    file.write_all(&[0x5a; 8192]).unwrap();
    let blk = Block::new(BlockConfig {
        id: "fuzz".into(),
        path: file.path().to_path_buf(),
        read_only,
    })
    .unwrap();
    drive(blk, &mut NoHost, &ops);
}

/// Frames from the host's network side of the net target: a full socket
/// drops them, as a TAP's queue would.
struct Peer(UnixDatagram);

impl HostSide for Peer {
    fn host(&mut self, data: &[u8]) {
        let _ = self.0.send(data);
    }
}

/// virtio-net: the guest's transmit and receive rings, virtio-net headers
/// and frames, and frames arriving from the host side (a datagram socket
/// pair stands in for the TAP; the device code is the same).
pub fn virtio_net(data: &[u8]) {
    let Some((mtu, ops)) = typed::<(u16, Vec<Op>)>(data) else {
        return;
    };
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    theirs.set_nonblocking(true).unwrap();
    let mut cfg = NetConfig::new("fuzz", TapSource::Name("unused".into()));
    cfg.mtu = mtu;
    cfg.mac = Some([0x02, 0, 0, 0, 0, 1]);
    let tap = Tap::from_datagram_fd(OwnedFd::from(ours)).unwrap();
    let Ok(net) = Net::with_tap(cfg, tap) else {
        return;
    };
    drive(net, &mut Peer(theirs), &ops);
}

/// Host clients of the vsock target's Unix socket.
struct Clients {
    path: PathBuf,
    open: Vec<UnixStream>,
}

impl HostSide for Clients {
    fn host(&mut self, data: &[u8]) {
        // First byte: a new connection (even) or more bytes on the last.
        if data.first().is_some_and(|b| b % 2 == 0) || self.open.is_empty() {
            if self.open.len() >= 8 {
                return;
            }
            let Ok(s) = UnixStream::connect(&self.path) else {
                return;
            };
            let _ = s.set_nonblocking(true);
            self.open.push(s);
        }
        if let Some(s) = self.open.last_mut() {
            let _ = s.write(data.get(1..).unwrap_or_default());
        }
    }
}

/// virtio-vsock: the guest's packets (headers, ops, credit, ports) through
/// the device and its connection muxer, and host clients connecting to the
/// device's Unix socket with arbitrary requests and data.
pub fn virtio_vsock(data: &[u8]) {
    let Some(ops) = typed::<Vec<Op>>(data) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.sock");
    let vsock = Vsock::new(VsockConfig {
        guest_cid: 3,
        uds_path: path.clone(),
    })
    .unwrap();
    let mut clients = Clients {
        path,
        open: Vec::new(),
    };
    drive(vsock, &mut clients, &ops);
}

/// The MMIO transport itself (register state machine, feature and queue
/// negotiation, resets), with the simplest device behind it (virtio-rng).
pub fn mmio_transport(data: &[u8]) {
    let Some(ops) = typed::<Vec<Op>>(data) else {
        return;
    };
    drive(Rng::new().unwrap(), &mut NoHost, &ops);
}

/// The guest agent's wire format as the host reads it: frame headers and
/// lengths, then the JSON of requests and responses. Everything the agent
/// sends is hostile (the guest may run anything).
pub fn agent_frames(data: &[u8]) {
    let mut r = FrameReader::new(data);
    for _ in 0..64 {
        match r.read_frame() {
            Ok(Some((_kind, payload))) => {
                // A response is what the host decodes; a request is what the
                // guest decodes (the agent's side of the same contract).
                if let Ok(resp) = decode_json::<Response>(payload) {
                    let again = serde_json::to_vec(&resp).unwrap();
                    let back: Response = decode_json(&again).unwrap();
                    assert_eq!(
                        serde_json::to_value(&back).unwrap(),
                        serde_json::to_value(&resp).unwrap()
                    );
                }
                let _ = decode_json::<Request>(payload);
            }
            Ok(None) | Err(_) => break,
        }
    }
}

/// The launch spec as guest init reads it: JSON plus validation. Init runs
/// as PID 1 with every privilege, so a spec that validates must be one it
/// can apply: validation never panics and a valid spec survives a round
/// trip unchanged.
pub fn launch_spec_json(data: &[u8]) {
    if let Ok(spec) = LaunchSpec::from_json(data) {
        let again = serde_json::to_vec(&spec).unwrap();
        let back = LaunchSpec::from_json(&again).expect("a valid spec stays valid");
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&spec).unwrap()
        );
    }
}

/// The hardened unpacker on image layers (whiteouts, hard links, symlinks,
/// xattrs, PAX headers): whatever the archive says, nothing outside the
/// destination is created, changed or removed.
pub fn layer_unpack(data: &[u8]) {
    let sb = Fence::new();
    let _ = unpack(data, &sb.dest(), &Options::layer(), &mut Stats::default());
    sb.check();
}

/// `mvctl cp SANDBOX:PATH DEST` and volume import: an archive from a guest
/// extracted with the strict options, merged into a directory that holds
/// other files, with and without renaming its top entry. Nothing outside
/// the destination is touched, and no setuid file or device appears.
pub fn cp_extract(data: &[u8]) {
    let Some((rename, data)) = typed::<(bool, &[u8])>(data) else {
        return;
    };
    let sb = Fence::new();
    let mut opts = Options::copy();
    if rename {
        opts.rename_top = Some(b"renamed".to_vec());
    }
    let _ = unpack(data, &sb.dest(), &opts, &mut Stats::default());
    sb.check();
    sb.check_no_setid_or_devices();
    // The re-serialiser (used where an archive is passed on rather than
    // extracted) accepts what it writes.
    if let Ok(mut clean) = sanitize(data, Vec::new(), &Options::copy(), &mut Stats::default()) {
        clean.extend_from_slice(&[0u8; 1024]);
        sanitize(
            &clean[..],
            Vec::new(),
            &Options::copy(),
            &mut Stats::default(),
        )
        .expect("a sanitized archive sanitizes again");
    }
}

/// The Dockerfile parser and its shell-word expansion (`$VAR`, `${VAR:-x}`,
/// quotes, escapes): a user's or a downloaded Dockerfile is hostile input
/// to mvmd.
pub fn dockerfile(data: &[u8]) {
    let Some(text) = typed::<&str>(data) else {
        return;
    };
    let _ = parse("Dockerfile", text);
    let mut vars = HashMap::new();
    vars.insert("A".to_string(), "x y".to_string());
    vars.insert("EMPTY".to_string(), String::new());
    for escape in ['\\', '`'] {
        let _ = shell::process_words(text, &vars, escape);
        let _ = shell::process_word(text, &vars, escape);
        let _ = shell::split_raw(text, escape);
    }
}

/// Image references (`registry:port/path/name:tag@sha256:...`): from CLI
/// flags, API requests, Dockerfile FROM lines and registries. A reference
/// that parses prints as itself and parses again to the same value.
pub fn image_reference(data: &[u8]) {
    let Some(s) = typed::<&str>(data) else {
        return;
    };
    if let Ok(r) = Reference::parse(s) {
        let printed = r.to_string();
        let again = Reference::parse(&printed).expect("a printed reference parses");
        assert_eq!(again, r, "{s:?} printed as {printed:?}");
        let _ = Reference::parse(&r.familiar());
        let _ = r.index_key();
    }
}

/// Image manifests, indexes and configs as registries and `load`ed
/// archives give them: parsing never panics, whatever the media type
/// claims; an index's platform choice works on any index that parses.
pub fn image_manifest(data: &[u8]) {
    let Some((which, data)) = typed::<(u8, &[u8])>(data) else {
        return;
    };
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
}

/// `POST /v1/sandboxes` bodies (and an image's config, hostile too) through
/// everything mvmd does before a VMM exists: JSON, the conversion to the
/// runtime's request, Docker's merge rules and the checks against the host,
/// then the launch spec guest init will read. What mvmd accepts, init must
/// accept: a resolved request whose launch spec fails validation is a bug
/// (the sandbox would fail at boot instead of at the API).
pub fn rest_create(data: &[u8]) {
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
}
