//! Static programs that run inside mvm guests for the end-to-end tests:
//! `mvm-vsock-tool` (vsock peers) and `mvm-hostile-agent` (a guest whose
//! PID 1 speaks the agent protocol as a compromised guest would).

pub mod vsock;
