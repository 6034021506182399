//! Snapshots: the state file's format and what it holds.
//!
//! A snapshot is two files. The **memory file** is guest RAM, region after
//! region, with pages of zeros left as holes (a sparse file); a restore
//! maps it `MAP_PRIVATE`, so pages are read lazily by the faults of the
//! guest that touches them and its writes stay its own (copy-on-write;
//! `vstate::memory`). The **state file** is everything else, in the
//! envelope of [`mvm_vmm_api::snapshot`] (magic, format version, length,
//! SHA-256), which the runtime checks too before it starts a VMM for it.
//!
//! The payload is a [`MicrovmState`] in postcard, a compact, documented
//! and stable serde encoding (a well-kept crate): the KVM structures are
//! kilobytes of raw bytes (XSAVE area, LAPIC page) that JSON would triple
//! and slow down, and the format's version and checksum live in the
//! header, so the payload needs no self-description. A file is refused,
//! never half-used, when its magic, version, length or checksum is wrong;
//! a payload that decodes is then checked against the configuration of the
//! VM being restored (memory size, vCPUs, devices, and the identity of the
//! kernel, init and VMM it was made with).
//!
//! Any change to [`MicrovmState`] or what it contains changes the wire
//! format: bump [`FORMAT_VERSION`]. Older snapshots are then refused with a
//! message, as Firecracker refuses snapshots of another version.
//!
//! The memory file is not checksummed: reading it whole would undo the
//! lazy restore. Its size is checked; its contents are the guest's own.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use mvm_virtio::transport::mmio::MmioState;
use mvm_vmm_api::Artifacts;
use serde::{Deserialize, Serialize};

use crate::devices::i8042::I8042Snapshot;
use crate::devices::serial::SerialSnapshot;
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;

use mvm_vmm_api::snapshot::SnapshotFileError;
pub use mvm_vmm_api::snapshot::{FORMAT_VERSION, MAX_STATE_BYTES};

/// Why a snapshot could not be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] SnapshotFileError),
    #[error("snapshot state {path} cannot be decoded: {detail}")]
    Decode { path: PathBuf, detail: String },
    #[error("encoding the snapshot state: {0}")]
    Encode(String),
    #[error("the snapshot does not fit this VM: {0}")]
    Mismatch(String),
}

/// Everything but guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct MicrovmState {
    /// The mvm-vmm version that wrote it (for messages).
    pub vmm_version: String,
    /// What the guest ran (`VmConfig::artifacts`), compared on restore.
    pub artifacts: Option<Artifacts>,
    /// Guest memory size in bytes (the memory file's size).
    pub memory_bytes: u64,
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub devices: DevicesState,
}

/// The devices' state, in the VM's slot order.
#[derive(Debug, Serialize, Deserialize)]
pub struct DevicesState {
    pub serial: SerialSnapshot,
    pub i8042: I8042Snapshot,
    /// Init had reported its boot complete.
    pub boot_complete: bool,
    /// The virtio transports, in MMIO slot order.
    pub virtio: Vec<MmioState>,
}

/// Encode `state` into the state file format.
pub fn encode(state: &MicrovmState) -> Result<Vec<u8>, SnapshotError> {
    let payload = postcard::to_stdvec(state).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    Ok(mvm_vmm_api::snapshot::seal(&payload))
}

/// Decode a state file's payload (`path` names it in errors).
fn decode_payload(payload: &[u8], path: &Path) -> Result<MicrovmState, SnapshotError> {
    let (state, rest): (MicrovmState, &[u8]) =
        postcard::take_from_bytes(payload).map_err(|e| SnapshotError::Decode {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(SnapshotError::Decode {
            path: path.to_path_buf(),
            detail: format!("{} bytes after the state", rest.len()),
        });
    }
    Ok(state)
}

/// Decode a whole state file's bytes (`path` names it in errors).
pub fn decode(bytes: &[u8], path: &Path) -> Result<MicrovmState, SnapshotError> {
    decode_payload(mvm_vmm_api::snapshot::open(bytes, path)?, path)
}

/// Write the state file at `path` (which must not exist), durably.
pub fn write(path: &Path, state: &MicrovmState) -> Result<(), SnapshotError> {
    let bytes = encode(state)?;
    let io = |what| {
        move |source| SnapshotError::Io {
            what,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io("creating"))?;
    f.write_all(&bytes).map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))?;
    Ok(())
}

/// Read and check the state file at `path`.
pub fn read(path: &Path) -> Result<MicrovmState, SnapshotError> {
    decode_payload(&mvm_vmm_api::snapshot::read(path)?, path)
}

impl MicrovmState {
    /// Refuse a snapshot that was not made by a VM like the one `cfg`
    /// describes: each difference would make the restored guest wrong.
    pub fn check_fits(
        &self,
        cfg: &mvm_vmm_api::VmConfig,
        device_types: &[u32],
    ) -> Result<(), SnapshotError> {
        let mismatch = |m: String| Err(SnapshotError::Mismatch(m));
        if self.artifacts != cfg.artifacts {
            let show = |a: &Option<Artifacts>| match a {
                Some(a) => format!("kernel {}, init {}, VMM {}", a.kernel, a.init, a.vmm),
                None => "no identity".into(),
            };
            return mismatch(format!(
                "it was made with {} (mvm-vmm {}); this VM runs {}",
                show(&self.artifacts),
                self.vmm_version,
                show(&cfg.artifacts)
            ));
        }
        let memory = cfg.memory_mib.saturating_mul(1 << 20);
        if self.memory_bytes != memory {
            return mismatch(format!(
                "its guest memory is {} bytes; this VM has {memory}",
                self.memory_bytes
            ));
        }
        if self.vcpus.len() != cfg.vcpus as usize {
            return mismatch(format!(
                "it has {} vCPUs; this VM has {}",
                self.vcpus.len(),
                cfg.vcpus
            ));
        }
        let theirs: Vec<u32> = self.devices.virtio.iter().map(|d| d.device_type).collect();
        if theirs != device_types {
            return mismatch(format!(
                "its virtio devices are of types {theirs:?}; this VM's are {device_types:?}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};

    fn state() -> MicrovmState {
        MicrovmState {
            vmm_version: "0.1.0".into(),
            artifacts: Some(Artifacts {
                kernel: "k".into(),
                init: "i".into(),
                vmm: "v".into(),
            }),
            memory_bytes: 128 << 20,
            vcpus: Vec::new(),
            vm: VmState {
                pic_master: kvm_irqchip::default(),
                pic_slave: kvm_irqchip::default(),
                ioapic: kvm_irqchip::default(),
                pit: kvm_pit_state2::default(),
                clock: kvm_clock_data {
                    clock: 12345,
                    ..Default::default()
                },
            },
            devices: DevicesState {
                serial: SerialSnapshot {
                    baud_divisor_low: 12,
                    baud_divisor_high: 0,
                    interrupt_enable: 0,
                    interrupt_identification: 1,
                    line_control: 3,
                    line_status: 0x60,
                    modem_control: 8,
                    modem_status: 0xb0,
                    scratch: 0,
                    in_buffer: vec![],
                },
                i8042: I8042Snapshot {
                    status: 0,
                    ctr: 0,
                    outp: 0,
                    pending: None,
                    buf: vec![],
                },
                boot_complete: true,
                virtio: vec![],
            },
        }
    }

    fn p() -> &'static Path {
        Path::new("/snap/state")
    }

    #[test]
    fn a_state_round_trips() {
        let bytes = encode(&state()).unwrap();
        let back = decode(&bytes, p()).unwrap();
        assert_eq!(back.vm.clock.clock, 12345);
        assert_eq!(back.memory_bytes, 128 << 20);
        assert_eq!(back.artifacts, state().artifacts);
    }

    #[test]
    fn every_truncation_is_refused_without_a_panic() {
        let bytes = encode(&state()).unwrap();
        for n in 0..bytes.len() {
            let err = decode(&bytes[..n], p()).unwrap_err();
            assert!(
                matches!(
                    err,
                    SnapshotError::File(
                        SnapshotFileError::TooShort(_) | SnapshotFileError::Length { .. }
                    )
                ),
                "cut at {n}: {err}"
            );
        }
        let err = decode(&bytes[..bytes.len() - 1], p()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn every_flipped_byte_is_refused_without_a_panic() {
        let bytes = encode(&state()).unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            assert!(decode(&b, p()).is_err(), "flip at {i} accepted");
        }
        let mut b = bytes.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        let err = decode(&b, p()).unwrap_err();
        assert!(
            matches!(err, SnapshotError::File(SnapshotFileError::Checksum(_))),
            "{err}"
        );
        assert!(err.to_string().contains("corrupt"), "{err}");
    }

    #[test]
    fn another_format_version_is_refused_by_name() {
        let mut bytes = encode(&state()).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        let err = decode(&bytes, p()).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::File(SnapshotFileError::Version { found: 2, .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("format version 2"), "{err}");
    }

    #[test]
    fn a_checksummed_payload_that_is_not_a_state_is_refused() {
        // A valid header around garbage: the decoder, not the checksum,
        // must refuse it.
        let bytes = mvm_vmm_api::snapshot::seal(&[0xffu8; 64]);
        let err = decode(&bytes, p()).unwrap_err();
        assert!(matches!(err, SnapshotError::Decode { .. }), "{err}");
    }

    #[test]
    fn other_files_are_refused_as_not_snapshots() {
        let err = decode(b"{\"kernel\": \"/boot/vmlinux\"} and more bytes", p()).unwrap_err();
        assert!(
            matches!(err, SnapshotError::File(SnapshotFileError::BadMagic(_))),
            "{err}"
        );
    }

    #[test]
    fn files_are_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write(&path, &state()).unwrap();
        assert!(
            write(&path, &state()).is_err(),
            "an existing file was overwritten"
        );
        assert_eq!(read(&path).unwrap().vm.clock.clock, 12345);
        let f = File::create(&path).unwrap();
        f.set_len(MAX_STATE_BYTES + 1).unwrap();
        assert!(matches!(
            read(&path),
            Err(SnapshotError::File(SnapshotFileError::TooLarge { .. }))
        ));
    }

    #[test]
    fn a_snapshot_of_another_vm_is_refused() {
        let s = state();
        let mut cfg = mvm_vmm_api::VmConfig::new("/k");
        cfg.memory_mib = 128;
        cfg.vcpus = 0;
        cfg.artifacts = s.artifacts.clone();
        s.check_fits(&cfg, &[]).unwrap();
        let mut other = cfg.clone();
        other.artifacts.as_mut().unwrap().kernel = "k2".into();
        let err = s.check_fits(&other, &[]).unwrap_err().to_string();
        assert!(
            err.contains("kernel k,") && err.contains("kernel k2"),
            "{err}"
        );
        let mut other = cfg.clone();
        other.artifacts.as_mut().unwrap().init = "i2".into();
        let err = s.check_fits(&other, &[]).unwrap_err().to_string();
        assert!(err.contains("init i,") && err.contains("init i2"), "{err}");
        let mut other = cfg.clone();
        other.artifacts.as_mut().unwrap().vmm = "v2".into();
        let err = s.check_fits(&other, &[]).unwrap_err().to_string();
        assert!(
            err.contains("VMM v (mvm-vmm 0.1.0)") && err.contains("VMM v2"),
            "{err}"
        );
        let mut other = cfg.clone();
        other.artifacts = None;
        let err = s.check_fits(&other, &[]).unwrap_err().to_string();
        assert!(err.contains("this VM runs no identity"), "{err}");
        let mut other = cfg.clone();
        other.memory_mib = 256;
        let err = s.check_fits(&other, &[]).unwrap_err().to_string();
        assert!(err.contains("its guest memory is 134217728 bytes"), "{err}");
        let mut other = cfg.clone();
        other.vcpus = 2;
        let err = s.check_fits(&other, &[]).unwrap_err().to_string();
        assert!(err.contains("it has 0 vCPUs; this VM has 2"), "{err}");
        let err = s.check_fits(&cfg, &[2]).unwrap_err().to_string();
        assert!(err.contains("types []; this VM's are [2]"), "{err}");
    }
}
