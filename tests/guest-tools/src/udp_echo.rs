//! `mvm-udp-echo`: a UDP server for the network end-to-end tests (busybox
//! has no UDP server). Built static like mvm-init and copied into the
//! test image.
//!
//! ```text
//! mvm-udp-echo PORT...   answer every datagram to 0.0.0.0:PORT with
//!                        "SOURCE-IP PORT PAYLOAD" until killed
//! ```
//!
//! The answer names the source address the guest saw (the host's side of
//! a published port: the bridge's address for the port proxy, the client
//! itself for DNAT) and the port that answered, so a test can tell which
//! path and which server a datagram took. Prints `udp-listening PORT`
//! once each port is bound.

use std::io::{self, Write};
use std::net::UdpSocket;
use std::process::ExitCode;

/// Serve one bound socket forever.
fn serve(sock: UdpSocket, port: u16) -> io::Result<()> {
    let mut buf = [0u8; 2048];
    loop {
        let (n, peer) = sock.recv_from(&mut buf)?;
        let payload = String::from_utf8_lossy(&buf[..n]);
        let answer = format!("{} {port} {}", peer.ip(), payload.trim_end());
        sock.send_to(answer.as_bytes(), peer)?;
    }
}

fn main() -> ExitCode {
    let ports: Result<Vec<u16>, _> = std::env::args().skip(1).map(|p| p.parse()).collect();
    let ports = match ports {
        Ok(p) if !p.is_empty() => p,
        _ => {
            eprintln!("usage: mvm-udp-echo PORT...");
            return ExitCode::from(2);
        }
    };
    let mut servers = Vec::new();
    for port in ports {
        let sock = match UdpSocket::bind(("0.0.0.0", port)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mvm-udp-echo: bind 0.0.0.0:{port}: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("udp-listening {port}");
        servers.push(std::thread::spawn(move || serve(sock, port)));
    }
    let _ = io::stdout().flush();
    for s in servers {
        if let Ok(Err(e)) = s.join() {
            eprintln!("mvm-udp-echo: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
