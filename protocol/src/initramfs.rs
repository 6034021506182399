//! Writing initramfs archives (the kernel's "newc" cpio format).
//!
//! The VMM loads one or more archives back to back as the initrd; the kernel
//! unpacks them in order into its initial root. mvm uses two: a shared one
//! with `/init` (our static init binary) and `/dev/console` (without it the
//! kernel starts init with no stdio), and a small per-sandbox one with the
//! launch spec. Writing the format ourselves keeps the host free of a `cpio`
//! dependency and lets the runtime build the spec archive in memory.

use std::io::{self, Write};

/// One entry of an archive.
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    /// A directory.
    Dir { path: &'a str, mode: u32 },
    /// A regular file.
    File {
        path: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    /// A character device node.
    CharDev {
        path: &'a str,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// Builds a newc archive entry by entry.
pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            ino: 1,
            written: 0,
        }
    }

    /// Append one entry. Paths are relative (no leading `/`).
    pub fn add(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        let (path, mode, data, rdev) = match *entry {
            Entry::Dir { path, mode } => (path, libc_s_ifdir() | (mode & 0o7777), &[][..], (0, 0)),
            Entry::File { path, mode, data } => (path, 0o100000 | (mode & 0o7777), data, (0, 0)),
            Entry::CharDev {
                path,
                mode,
                major,
                minor,
            } => (path, 0o020000 | (mode & 0o7777), &[][..], (major, minor)),
        };
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad cpio path"));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio entry over 4 GiB"))?;
        let nlink = if mode & 0o170000 == libc_s_ifdir() {
            2
        } else {
            1
        };
        let ino = self.ino;
        self.ino += 1;
        self.header(ino, mode, nlink, size, rdev, path)?;
        self.write_padded(data)?;
        Ok(())
    }

    /// Write the trailer and return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
        name: &str,
    ) -> io::Result<()> {
        let namesize = name.len() + 1;
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{dmaj:08x}{dmin:08x}{rmaj:08x}{rmin:08x}{namesize:08x}{check:08x}",
            uid = 0,
            gid = 0,
            mtime = 0,
            dmaj = 0,
            dmin = 0,
            rmaj = rdev.0,
            rmin = rdev.1,
            check = 0,
        );
        let mut buf = hdr.into_bytes();
        buf.extend_from_slice(name.as_bytes());
        buf.push(0);
        self.write_padded(&buf)
    }

    fn write_padded(&mut self, data: &[u8]) -> io::Result<()> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

const fn libc_s_ifdir() -> u32 {
    0o040000
}

/// The shared archive: `/init` from `init_binary` plus the directories and
/// device node init needs before it mounts anything.
pub fn init_archive(init_binary: &[u8]) -> io::Result<Vec<u8>> {
    let mut w = Writer::new(Vec::with_capacity(init_binary.len() + 4096));
    for dir in ["dev", "proc", "sys", "mvm"] {
        w.add(&Entry::Dir {
            path: dir,
            mode: 0o755,
        })?;
    }
    w.add(&Entry::CharDev {
        path: "dev/console",
        mode: 0o600,
        major: 5,
        minor: 1,
    })?;
    w.add(&Entry::File {
        path: "init",
        mode: 0o755,
        data: init_binary,
    })?;
    w.finish()
}

/// The per-sandbox archive carrying the launch spec JSON.
pub fn spec_archive(spec_json: &[u8]) -> io::Result<Vec<u8>> {
    let mut w = Writer::new(Vec::with_capacity(spec_json.len() + 512));
    w.add(&Entry::Dir {
        path: "mvm",
        mode: 0o755,
    })?;
    w.add(&Entry::File {
        path: crate::launch::SPEC_PATH,
        mode: 0o400,
        data: spec_json,
    })?;
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_newc_aligned() {
        let a = spec_archive(b"{\"x\":1}").unwrap();
        assert!(a.starts_with(b"070701"));
        assert_eq!(a.len() % 4, 0);
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("mvm/launch.json\0"));
        assert!(text.contains("TRAILER!!!\0"));
    }

    /// Cross-check with GNU cpio (installed by `make deps`).
    #[test]
    fn gnu_cpio_reads_it() {
        let a = init_archive(b"\x7fELF fake").unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "-v"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&a).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("dev/console"), "{listing}");
        assert!(listing.contains("init"), "{listing}");
        assert!(listing.lines().any(|l| l.starts_with('c')), "{listing}");
    }
}
