//! Imports a root filesystem tarball (or loads an image archive) into the
//! image store and prints the image ID. A stand-in for `mvctl import` /
//! `mvctl load` used by `resources/images/*.sh --import-with` and the
//! benchmark until the CLI exists.
//!
//! Usage: mvm-images-import [--root DIR] [--load] FILE [NAME[:TAG]]

use std::process::ExitCode;

use mvm_images::{ImportOptions, LoadOptions, Reference, Store};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut root = None;
    let mut load = false;
    while let Some(a) = args.first().cloned() {
        match a.as_str() {
            "--root" if args.len() > 1 => {
                root = Some(args[1].clone());
                args.drain(..2);
            }
            "--load" => {
                load = true;
                args.remove(0);
            }
            _ => break,
        }
    }
    if args.is_empty() || args.len() > 2 {
        eprintln!("usage: mvm-images-import [--root DIR] [--load] FILE [NAME[:TAG]]");
        return ExitCode::from(2);
    }
    match run(root, load, &args[0], args.get(1)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mvm-images-import: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(
    root: Option<String>,
    load: bool,
    file: &str,
    name: Option<&String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let store = match root {
        Some(r) => Store::open(r)?,
        None => Store::open_default()?,
    };
    let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
    let reference = name.map(|n| Reference::parse(n)).transpose()?;
    if load {
        let opts = LoadOptions {
            tag_as: reference,
            ..LoadOptions::default()
        };
        for img in store.load(std::io::BufReader::new(f), &opts)? {
            println!("{} {}", img.id, img.names.join(" "));
        }
    } else {
        let img = store.import(
            std::io::BufReader::new(f),
            reference.as_ref(),
            &ImportOptions::default(),
        )?;
        println!("{} {}", img.id, img.names.join(" "));
    }
    Ok(())
}
