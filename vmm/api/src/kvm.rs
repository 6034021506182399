//! Is there a KVM `mvm-vmm` can boot a stock guest kernel on?
//!
//! Three cases matter: hardware virtualization (Intel VT-x or AMD-V,
//! native or nested), PVM (a software hypervisor exposed as /dev/kvm that
//! only runs PVM-patched guests; a stock kernel crawls and then dies on an
//! emulation failure), and no usable /dev/kvm. One probe for everyone:
//! `mvctl` uses [`detect`] to decide between a local `mvmd` and the mvm
//! machine, `mvmd` reports it in `system info`, the tests check it before
//! booting, and the VMM uses [`open`] to refuse early with a message that
//! says what to do.

use std::fmt;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

/// Where to run guests when the host's /dev/kvm is PVM.
pub const PVM_HINT: &str = "this host's /dev/kvm is PVM, which cannot boot a stock guest kernel; \
run sandboxes in the mvm machine (mvctl machine start; mvctl does it by itself) \
or, for tests, inside the emulated KVM host (resources/testhost/run)";

/// The capabilities the VMM relies on.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::MpState, "KVM_CAP_MP_STATE"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
];

/// The CPU vendor's virtualization extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// Intel VT-x (`vmx`).
    Intel,
    /// AMD-V (`svm`).
    Amd,
    /// /dev/kvm works but /proc/cpuinfo names neither (unusual kernels).
    Unknown,
}

/// What kind of KVM this host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmMode {
    Hardware { vendor: Vendor },
    Pvm,
    Unavailable(String),
}

impl KvmMode {
    /// One word for scripts: `hardware`, `pvm` or `none`.
    pub fn short(&self) -> &'static str {
        match self {
            KvmMode::Hardware { .. } => "hardware",
            KvmMode::Pvm => "pvm",
            KvmMode::Unavailable(_) => "none",
        }
    }
}

impl fmt::Display for KvmMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmMode::Hardware { vendor } => write!(f, "hardware KVM ({vendor:?})"),
            KvmMode::Pvm => f.write_str(PVM_HINT),
            KvmMode::Unavailable(why) => f.write_str(why),
        }
    }
}

/// Errors from [`open`].
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("{0}")]
    Unavailable(String),
    #[error("{PVM_HINT} (pass --force-pvm to try anyway)")]
    Pvm,
}

/// What the checks look at, gathered separately so the classification
/// can be tested without the files.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    pub dev_exists: bool,
    /// The error from opening /dev/kvm, if any.
    pub open_error: Option<std::io::ErrorKind>,
    pub open_error_text: Option<String>,
    pub pvm_module: bool,
    pub cpu_flags: Vec<String>,
    pub api_version: Option<i32>,
    pub missing_caps: Vec<&'static str>,
}

/// Classify a [`Probe`].
pub fn classify(p: &Probe) -> KvmMode {
    if !p.dev_exists {
        return KvmMode::Unavailable(
            "/dev/kvm does not exist: load kvm_intel or kvm_amd (modprobe), or enable \
             virtualization (VT-x/AMD-V) in the firmware or for this VM"
                .into(),
        );
    }
    if let Some(kind) = p.open_error {
        let msg = match kind {
            std::io::ErrorKind::PermissionDenied => "cannot open /dev/kvm: permission denied; \
                 add yourself to the kvm group (sudo usermod -aG kvm $USER, then log in again)"
                .to_string(),
            _ => format!(
                "cannot open /dev/kvm: {}",
                p.open_error_text.as_deref().unwrap_or("unknown error")
            ),
        };
        return KvmMode::Unavailable(msg);
    }
    let has = |f: &str| p.cpu_flags.iter().any(|x| x == f);
    let vendor = if has("vmx") {
        Vendor::Intel
    } else if has("svm") {
        Vendor::Amd
    } else {
        Vendor::Unknown
    };
    if p.pvm_module && vendor == Vendor::Unknown {
        return KvmMode::Pvm;
    }
    if let Some(v) = p.api_version {
        if v != 12 {
            return KvmMode::Unavailable(format!("KVM API version {v} is not the stable 12"));
        }
    }
    if !p.missing_caps.is_empty() {
        return KvmMode::Unavailable(format!(
            "KVM lacks capabilities the VMM needs: {}",
            p.missing_caps.join(", ")
        ));
    }
    KvmMode::Hardware { vendor }
}

/// The CPU flags of the first processor in /proc/cpuinfo.
fn cpu_flags() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, f)| f.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Capabilities from [`REQUIRED_CAPS`] that `kvm` does not offer.
pub fn missing_caps(kvm: &Kvm) -> Vec<&'static str> {
    REQUIRED_CAPS
        .iter()
        .filter(|(cap, _)| !kvm.check_extension(*cap))
        .map(|(_, name)| *name)
        .collect()
}

/// Gather a [`Probe`] of this host, with the open KVM handle if any.
pub fn probe() -> (Probe, Option<Kvm>) {
    let mut p = Probe {
        dev_exists: Path::new("/dev/kvm").exists(),
        pvm_module: Path::new("/sys/module/kvm_pvm").exists(),
        cpu_flags: cpu_flags(),
        ..Default::default()
    };
    let mut kvm = None;
    if p.dev_exists {
        match Kvm::new() {
            Ok(k) => {
                p.api_version = Some(k.get_api_version());
                p.missing_caps = missing_caps(&k);
                kvm = Some(k);
            }
            Err(e) => {
                let io = std::io::Error::from_raw_os_error(e.errno());
                p.open_error = Some(io.kind());
                p.open_error_text = Some(io.to_string());
            }
        }
    }
    (p, kvm)
}

/// Detect this host's KVM mode.
pub fn detect() -> KvmMode {
    classify(&probe().0)
}

/// Open KVM for booting a guest. A PVM host is refused unless `force_pvm`
/// (experiments: a stock kernel is very slow there or fails).
pub fn open(force_pvm: bool) -> Result<Kvm, KvmError> {
    let (p, kvm) = probe();
    match (classify(&p), kvm) {
        (KvmMode::Hardware { .. }, Some(kvm)) => Ok(kvm),
        (KvmMode::Pvm, Some(kvm)) if force_pvm => {
            if !p.missing_caps.is_empty() {
                return Err(KvmError::Unavailable(format!(
                    "KVM lacks capabilities the VMM needs: {}",
                    p.missing_caps.join(", ")
                )));
            }
            Ok(kvm)
        }
        (KvmMode::Pvm, _) => Err(KvmError::Pvm),
        (KvmMode::Unavailable(why), _) => Err(KvmError::Unavailable(why)),
        (KvmMode::Hardware { .. }, None) => {
            Err(KvmError::Unavailable("/dev/kvm could not be opened".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usable(flags: &[&str]) -> Probe {
        Probe {
            dev_exists: true,
            cpu_flags: flags.iter().map(|s| s.to_string()).collect(),
            api_version: Some(12),
            ..Default::default()
        }
    }

    #[test]
    fn hardware_vendors() {
        assert_eq!(
            classify(&usable(&["fpu", "vmx"])),
            KvmMode::Hardware {
                vendor: Vendor::Intel
            }
        );
        assert_eq!(
            classify(&usable(&["svm", "npt"])),
            KvmMode::Hardware {
                vendor: Vendor::Amd
            }
        );
        assert_eq!(
            classify(&usable(&["fpu"])),
            KvmMode::Hardware {
                vendor: Vendor::Unknown
            }
        );
        // A PVM module next to real VT-x: the hardware wins.
        let p = Probe {
            pvm_module: true,
            ..usable(&["vmx"])
        };
        assert_eq!(classify(&p).short(), "hardware");
    }

    #[test]
    fn pvm_and_unavailable() {
        let p = Probe {
            pvm_module: true,
            ..usable(&["fpu"])
        };
        assert_eq!(classify(&p), KvmMode::Pvm);
        assert!(classify(&p).to_string().contains("resources/testhost/run"));

        let m = classify(&Probe::default());
        assert!(m.to_string().contains("kvm_intel or kvm_amd"), "{m}");
        assert_eq!(m.short(), "none");

        let p = Probe {
            open_error: Some(std::io::ErrorKind::PermissionDenied),
            ..usable(&["vmx"])
        };
        assert!(classify(&p).to_string().contains("kvm group"));

        let p = Probe {
            missing_caps: vec!["KVM_CAP_IRQFD"],
            ..usable(&["vmx"])
        };
        assert!(classify(&p).to_string().contains("KVM_CAP_IRQFD"));
        let p = Probe {
            api_version: Some(11),
            ..usable(&["vmx"])
        };
        assert_eq!(classify(&p).short(), "none");
    }

    /// On this very host: detection must not panic and must agree with
    /// the PVM marker when there is one.
    #[test]
    fn detect_here_is_consistent() {
        let mode = detect();
        if Path::new("/sys/module/kvm_pvm").exists()
            && !cpu_flags().iter().any(|f| f == "vmx" || f == "svm")
        {
            assert_eq!(mode, KvmMode::Pvm);
            assert!(matches!(open(false), Err(KvmError::Pvm)));
        }
    }
}
