//! Warm starts, step 1 (docs/snapshots.md, "Warm starts"): a VM booted
//! with a warm launch spec waits, after init's `WarmReady`, for the
//! sandbox's spec in the agent's `launch` request. This module is the
//! host's half of that hand-over; [`crate::transient`] boots such VMs
//! ([`crate::Runtime::start_warm_transient`]).
//!
//! Opt-in only: nothing in mvmd's `run` path uses it yet (that is
//! `mvmd --warm-starts`, with templates and restores, steps 2 and 3).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mvm_protocol::agent::client::{AgentClient, ClientError};
use mvm_protocol::launch::{LaunchSpec, ENTROPY_LEN};
use mvm_vmm_api::control::{self, ControlError, Request, Response};

/// Why a warm VM could not be handed its spec.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error("the microVM ended before its guest reported WarmReady (an init that predates warm starts refuses the warm spec at boot; see the console)")]
    EndedBeforeReady,
    #[error("waiting for the guest's WarmReady: {0}")]
    Control(#[from] ControlError),
    #[error("waiting for the guest's WarmReady: the VMM answered {0}")]
    Vmm(String),
    #[error("the guest did not report WarmReady within {0:?}")]
    Timeout(Duration),
    #[error("handing the launch spec to the warm guest: {0}")]
    Agent(#[from] ClientError),
    #[error("this microVM was not booted warm, or was launched already")]
    NotWarm,
    #[error("cannot read entropy for the guest (getrandom): {0}")]
    Entropy(std::io::Error),
    #[error("the host's clock is before 1970")]
    Clock,
}

/// Wait until the VMM listening on `socket` reports its guest's
/// `WarmReady` (the control socket answers at that event; no polling),
/// for at most `timeout`. Blocking.
///
/// A VMM just spawned binds its control socket while it sets the VM up:
/// until then connecting finds no socket (or no listener), and is retried
/// with a short back-off, as the agent client retries the vsock socket.
/// The caller races this against the VMM's end
/// ([`crate::transient::Transient::wait_warm_ready`]).
pub fn wait_ready(socket: &Path, timeout: Duration) -> Result<(), WarmError> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(2);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(WarmError::Timeout(timeout));
        }
        match call_once(socket, left) {
            Err(WarmError::Control(ControlError::Connect { source, .. }))
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                if Instant::now() + delay >= deadline {
                    return Err(WarmError::Timeout(timeout));
                }
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(50));
            }
            Err(WarmError::Timeout(_)) => return Err(WarmError::Timeout(timeout)),
            r => return r,
        }
    }
}

fn call_once(socket: &Path, timeout: Duration) -> Result<(), WarmError> {
    match control::call(socket, &Request::WaitWarmReady, timeout) {
        Ok(Response::WarmReady) => Ok(()),
        Ok(Response::Error { message }) => Err(WarmError::Vmm(message)),
        Ok(other) => Err(WarmError::Vmm(format!("{other:?}"))),
        Err(ControlError::NoAnswer(_)) => Err(WarmError::EndedBeforeReady),
        Err(ControlError::Io { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(WarmError::Timeout(timeout))
        }
        Err(e) => Err(e.into()),
    }
}

/// `spec` as it is handed over now: with the host's realtime clock and
/// [`ENTROPY_LEN`] fresh bytes from `getrandom`, which init applies
/// before the workload starts.
pub fn handover_spec(spec: &LaunchSpec) -> Result<LaunchSpec, WarmError> {
    let mut spec = spec.clone();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| WarmError::Clock)?;
    spec.realtime_ns = Some(u64::try_from(now.as_nanos()).unwrap_or(u64::MAX));
    spec.set_entropy(&entropy()?);
    Ok(spec)
}

/// Hand `spec` to the warm guest's agent through `client`.
pub async fn launch(client: &mut AgentClient, spec: &LaunchSpec) -> Result<(), WarmError> {
    client.launch(spec).await?;
    Ok(())
}

fn entropy() -> Result<[u8; ENTROPY_LEN], WarmError> {
    let mut buf = [0u8; ENTROPY_LEN];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: getrandom writes at most the given length into `buf`
        // from offset `got`, which is within it.
        let n = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), buf.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(WarmError::Entropy(e));
        }
        got += n as usize;
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handed_over_spec_carries_the_clock_and_fresh_entropy() {
        let spec = LaunchSpec::new(vec!["true".into()]);
        let a = handover_spec(&spec).unwrap();
        let b = handover_spec(&spec).unwrap();
        a.validate().unwrap();
        assert!(a.realtime_ns.unwrap() >= mvm_protocol::launch::MIN_REALTIME_NS);
        assert_eq!(a.entropy_bytes().unwrap().len(), ENTROPY_LEN);
        assert_ne!(a.entropy, b.entropy, "each hand-over draws its own");
        assert_eq!(a.process, spec.process);
    }

    #[test]
    fn no_socket_within_the_deadline_is_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let e = wait_ready(&dir.path().join("ctl.sock"), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, WarmError::Timeout(_)), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    /// A VMM stand-in that binds its socket late, answers the wait when
    /// "the guest" is ready, or closes without an answer.
    #[test]
    fn the_wait_finds_a_late_socket_and_ends_with_the_answer() {
        use std::io::{BufRead, BufReader, Write};
        use std::os::unix::net::UnixListener;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let p = path.clone();
        let vmm = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let l = UnixListener::bind(&p).unwrap();
            for answer in [Some("\"warm_ready\"\n"), None] {
                let (mut s, _) = l.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&s).read_line(&mut line).unwrap();
                assert_eq!(line, "\"wait_warm_ready\"\n");
                if let Some(a) = answer {
                    s.write_all(a.as_bytes()).unwrap();
                }
            }
        });
        wait_ready(&path, Duration::from_secs(10)).unwrap();
        let e = wait_ready(&path, Duration::from_secs(10)).unwrap_err();
        assert!(matches!(e, WarmError::EndedBeforeReady), "{e}");
        vmm.join().unwrap();
    }
}
