//! `mvm-vsock-tool`: the guest side of the vsock end-to-end tests. Built
//! static (like mvm-init) and copied into the test root disk.
//!
//! ```text
//! mvm-vsock-tool echo PORT COUNT      serve COUNT connections on PORT, echoing
//!                                     each until EOF, then exit 0
//! mvm-vsock-tool connect PORT MSG     connect to the host (CID 2) on PORT, send
//!                                     MSG, half-close, print the reply
//! mvm-vsock-tool flood PORT           accept one connection on PORT and write
//!                                     to it forever
//! mvm-vsock-tool sink PORT            accept one connection on PORT, read it to
//!                                     EOF, answer with the byte count
//! ```
//!
//! Markers on stdout (the console) tell the host what happened:
//! `vsock-listening PORT`, `vsock-reply: TEXT`, `vsock-connect-error: ERRNO`,
//! `vsock-echo-done N`.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use mvm_guest_tools::vsock::{accept, connect, listen, shutdown_write, VMADDR_CID_HOST};

fn echo(port: u32, count: usize) -> io::Result<()> {
    let l = listen(port)?;
    println!("vsock-listening {port}");
    let mut workers = Vec::new();
    for _ in 0..count {
        let mut c = accept(&l)?;
        workers.push(std::thread::spawn(move || -> io::Result<u64> {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let n = c.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                c.write_all(&buf[..n])?;
                total += n as u64;
            }
            shutdown_write(&c);
            Ok(total)
        }));
    }
    let mut total = 0;
    for w in workers {
        total += w
            .join()
            .map_err(|_| io::Error::other("worker panicked"))??;
    }
    println!("vsock-echo-done {total}");
    Ok(())
}

fn connect_host(port: u32, msg: &str) -> io::Result<()> {
    let mut c = match connect(VMADDR_CID_HOST, port) {
        Ok(c) => c,
        Err(e) => {
            println!("vsock-connect-error: {}", e.raw_os_error().unwrap_or(0));
            return Err(e);
        }
    };
    c.write_all(msg.as_bytes())?;
    shutdown_write(&c);
    let mut reply = String::new();
    c.read_to_string(&mut reply)?;
    println!("vsock-reply: {reply}");
    Ok(())
}

fn flood(port: u32) -> io::Result<()> {
    let l = listen(port)?;
    println!("vsock-listening {port}");
    let mut c = accept(&l)?;
    let chunk = vec![0x5au8; 64 * 1024];
    loop {
        c.write_all(&chunk)?;
    }
}

fn sink(port: u32) -> io::Result<()> {
    let l = listen(port)?;
    println!("vsock-listening {port}");
    let mut c = accept(&l)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    c.write_all(format!("{total}\n").as_bytes())?;
    println!("vsock-sink-done {total}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = |i: usize| args.get(i).and_then(|p| p.parse::<u32>().ok());
    let res = match (args.first().map(String::as_str), port(1)) {
        (Some("echo"), Some(p)) => echo(p, args.get(2).and_then(|c| c.parse().ok()).unwrap_or(1)),
        (Some("connect"), Some(p)) => connect_host(p, args.get(2).map_or("hello", String::as_str)),
        (Some("flood"), Some(p)) => flood(p),
        (Some("sink"), Some(p)) => sink(p),
        _ => {
            eprintln!("usage: mvm-vsock-tool echo PORT [COUNT] | connect PORT [MSG] | flood PORT | sink PORT");
            return ExitCode::from(2);
        }
    };
    let _ = io::stdout().flush();
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mvm-vsock-tool: {e}");
            ExitCode::FAILURE
        }
    }
}
