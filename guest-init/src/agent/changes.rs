//! `changes`: the overlay's upper directory as an OCI layer tar, for a
//! guest launched with `rootfs.export_changes` (the builder's RUN steps).
//!
//! The upper directory is on the scratch disk (or a tmpfs), mounted in the
//! initramfs before init switched into the overlay; once switched, no path
//! leads to it. Init keeps a descriptor of it ([`crate::rootfs::Assembled`])
//! and this module reads through `/proc/self/fd/N`, which names the
//! directory whatever the root. It runs only after the workload and
//! everything it left behind have ended, so nothing changes underneath.
//!
//! The layer form is `mvm_protocol::layer`'s: whiteouts (character devices
//! 0:0) become `.wh.NAME`, opaque directories get `.wh..wh..opq`, xattrs
//! other than overlayfs' own travel as PAX records, the files init writes
//! at boot and empty mount points it made are left out. Hard links within
//! the upper directory stay links; sockets are skipped, as Docker does.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use mvm_protocol::agent::Kind;
use mvm_protocol::layer::{self, OPAQUE_MARKER, WHITEOUT_PREFIX};
use tar::EntryType;

use super::copy::{CopyError, DataWriter};
use super::session::SharedWriter;

type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a changes stream held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries written (whiteouts and markers included).
    pub entries: u64,
    /// Deletions.
    pub whiteouts: u64,
    /// Opaque directories.
    pub opaque: u64,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        what,
        path: path.into(),
        source,
    }
}

/// Send the changes under `upper` as DATA frames, then DATA_EOF.
pub fn send(upper: &Path, out: &SharedWriter) -> Result<Stats, CopyError> {
    let sink = BufWriter::with_capacity(256 * 1024, DataWriter::new(out));
    let (mut sink, stats) = write(upper, sink)?;
    sink.flush().map_err(CopyError::Send)?;
    drop(sink);
    out.frame(Kind::DataEof, &[])
        .map_err(|e| CopyError::Send(io::Error::other(e.to_string())))?;
    Ok(stats)
}

/// Write the changes under `upper` as a layer tar to `out`; returns the
/// writer and what was written.
pub fn write<W: Write>(upper: &Path, out: W) -> Result<(W, Stats), CopyError> {
    let mut w = Writer {
        tar: tar::Builder::new(out),
        stats: Stats::default(),
        links: HashMap::new(),
    };
    w.tar.mode(tar::HeaderMode::Complete);
    w.walk(upper, "")?;
    let out = w.tar.into_inner().map_err(CopyError::Send)?;
    Ok((out, w.stats))
}

struct Writer<W: Write> {
    tar: tar::Builder<W>,
    stats: Stats,
    /// (dev, ino) of files with more than one link -> the first name.
    links: HashMap<(u64, u64), String>,
}

fn header(kind: EntryType, md: &Metadata, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(md.mode() & 0o7777);
    h.set_uid(u64::from(md.uid()));
    h.set_gid(u64::from(md.gid()));
    h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
    h.set_size(size);
    h
}

impl<W: Write> Writer<W> {
    fn walk(&mut self, dir: &Path, rel: &str) -> Result<(), CopyError> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(io_err("read directory", dir))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io_err("read directory", dir))?;
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let name = name.to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let md = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
            self.entry(&path, &r, &md)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path, r: &str, md: &Metadata) -> Result<(), CopyError> {
        let send = CopyError::Send;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            let (parent, name) = match r.rsplit_once('/') {
                Some((p, n)) => (format!("{p}/"), n),
                None => (String::new(), r),
            };
            self.marker(&format!("{parent}{WHITEOUT_PREFIX}{name}"), md)?;
            self.stats.whiteouts += 1;
            return Ok(());
        }
        if ft.is_dir() {
            let (x, opaque) = xattrs_of(path)?;
            let empty = fs::read_dir(path)
                .map_err(io_err("read directory", path))?
                .next()
                .is_none();
            if empty && !opaque && layer::MOUNT_POINTS.contains(&r) {
                return Ok(());
            }
            self.pax(r, &x)?;
            let mut h = header(EntryType::Directory, md, 0);
            self.tar
                .append_data(&mut h, format!("{r}/"), io::empty())
                .map_err(send)?;
            self.stats.entries += 1;
            if opaque {
                self.marker(&format!("{r}/{OPAQUE_MARKER}"), md)?;
                self.stats.opaque += 1;
            }
            return self.walk(path, r);
        }
        if layer::RUNTIME_FILES.contains(&r) {
            return Ok(());
        }
        if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io_err("read link", path))?;
            let mut h = header(EntryType::Symlink, md, 0);
            self.tar.append_link(&mut h, r, &target).map_err(send)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                    let mut h = header(EntryType::Link, md, 0);
                    let first = first.clone();
                    self.tar.append_link(&mut h, r, &first).map_err(send)?;
                    self.stats.entries += 1;
                    return Ok(());
                }
                self.links.insert((md.dev(), md.ino()), r.to_string());
            }
            let (x, _) = xattrs_of(path)?;
            self.pax(r, &x)?;
            let f = File::open(path).map_err(io_err("open", path))?;
            let mut h = header(EntryType::Regular, md, md.len());
            // Exactly the size in the header: a file cannot change now
            // (its writers are gone), and `take` guards the format anyway.
            use std::io::Read;
            self.tar
                .append_data(&mut h, r, f.take(md.len()))
                .map_err(send)?;
        } else {
            let kind = if ft.is_fifo() {
                EntryType::Fifo
            } else if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                // Sockets cannot be archived.
                return Ok(());
            };
            let mut h = header(kind, md, 0);
            let rdev = md.rdev();
            h.set_device_major(libc::major(rdev)).map_err(send)?;
            h.set_device_minor(libc::minor(rdev)).map_err(send)?;
            self.tar.append_data(&mut h, r, io::empty()).map_err(send)?;
        }
        self.stats.entries += 1;
        Ok(())
    }

    /// An empty regular file: a whiteout or an opaque marker.
    fn marker(&mut self, name: &str, md: &Metadata) -> Result<(), CopyError> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        h.set_size(0);
        self.tar
            .append_data(&mut h, name, io::empty())
            .map_err(CopyError::Send)?;
        self.stats.entries += 1;
        Ok(())
    }

    /// A PAX header with the xattrs of the entry `name` that follows.
    fn pax(&mut self, name: &str, xattrs: &Xattrs) -> Result<(), CopyError> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let data = layer::pax_xattr_records(xattrs);
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        // The header's own name is informational; keep it short.
        let short: String = name
            .chars()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        self.tar
            .append_data(
                &mut h,
                format!("PaxHeaders/{}", short.trim_start_matches('/')),
                &data[..],
            )
            .map_err(CopyError::Send)
    }
}

/// The xattrs of `path` worth keeping in a layer, and whether it is an
/// opaque directory, without following a symlink.
fn xattrs_of(path: &Path) -> Result<(Xattrs, bool), CopyError> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io_err("list xattrs of", path)(io::ErrorKind::InvalidInput.into()))?;
    let names = match list_xattrs(&c) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok((Vec::new(), false)),
        Err(e) => return Err(io_err("list xattrs of", path)(e)),
    };
    let mut out = Vec::new();
    let mut opaque = false;
    for n in names {
        if n == b"trusted.overlay.opaque" {
            opaque = get_xattr(&c, &n)
                .map_err(io_err("read xattr of", path))?
                .as_deref()
                == Some(b"y");
            continue;
        }
        if layer::keep_xattr(&n) {
            if let Some(v) = get_xattr(&c, &n).map_err(io_err("read xattr of", path))? {
                out.push((n, v));
            }
        }
    }
    out.sort();
    Ok((out, opaque))
}

fn list_xattrs(path: &CString) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: llistxattr writes at most `buf.len()` bytes into `buf`
        // and reads the NUL-terminated path.
        let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) || buf.len() >= 1 << 20 {
            return Err(e);
        }
        buf.resize(buf.len() * 4, 0);
    }
}

fn get_xattr(path: &CString, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: lgetxattr writes at most `buf.len()` bytes into `buf`
        // and reads the two NUL-terminated strings.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Entry = (String, EntryType, Vec<(String, Vec<u8>)>);

    fn entries(tar: &[u8]) -> Vec<Entry> {
        let mut ar = tar::Archive::new(tar);
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let kind = e.header().entry_type();
            let mut x = Vec::new();
            if let Some(exts) = e.pax_extensions().unwrap() {
                for ext in exts {
                    let ext = ext.unwrap();
                    x.push((ext.key().unwrap().to_string(), ext.value_bytes().to_vec()));
                }
            }
            out.push((name, kind, x));
        }
        out
    }

    fn c(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    fn mknod_whiteout(p: &Path) {
        // SAFETY: a valid C string; mknod has no other memory effects.
        let r = unsafe { libc::mknod(c(p).as_ptr(), libc::S_IFCHR, 0) };
        assert_eq!(r, 0, "mknod needs root: {}", io::Error::last_os_error());
    }

    fn setxattr(p: &Path, name: &str, value: &[u8]) {
        let n = CString::new(name).unwrap();
        // SAFETY: valid C strings and a value buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                c(p).as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "setxattr {name}: {}", io::Error::last_os_error());
    }

    #[test]
    fn upper_dir_whiteouts_and_opaque_dirs_become_oci_markers() {
        let d = tempfile::tempdir().unwrap();
        let up = d.path().join("upper");
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::create_dir_all(up.join("app/fresh")).unwrap();
        fs::create_dir_all(up.join("proc")).unwrap();
        fs::write(up.join("app/new.txt"), "new").unwrap();
        fs::hard_link(up.join("app/new.txt"), up.join("app/again.txt")).unwrap();
        fs::write(up.join("etc/hosts"), "127.0.0.1 x").unwrap();
        std::os::unix::fs::symlink("new.txt", up.join("app/link")).unwrap();
        std::os::unix::net::UnixListener::bind(up.join("app/sock")).unwrap();
        mknod_whiteout(&up.join("etc/deleted"));
        setxattr(&up.join("app/fresh"), "trusted.overlay.opaque", b"y");
        setxattr(&up.join("app"), "trusted.overlay.origin", b"junk");
        setxattr(&up.join("app/new.txt"), "user.note", b"kept");
        let (tar, st) = write(&up, Vec::new()).unwrap();
        assert_eq!((st.whiteouts, st.opaque), (1, 1));
        let e = entries(&tar);
        let names: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "app/",
                "app/again.txt",
                "app/fresh/",
                "app/fresh/.wh..wh..opq",
                "app/link",
                "app/new.txt",
                "etc/",
                "etc/.wh.deleted"
            ],
            "etc/hosts, the socket and the empty /proc mount point are left out"
        );
        assert!(
            e[0].2.is_empty(),
            "overlay xattrs are dropped: {:?}",
            e[0].2
        );
        assert_eq!(e[1].1, EntryType::Regular);
        assert_eq!(e[5].1, EntryType::Link, "the second name is a hard link");
        assert_eq!(e[4].1, EntryType::Symlink);
        assert_eq!(e[7].1, EntryType::Regular);
        // The user xattr is on whichever name came first (again.txt).
        assert_eq!(
            e[1].2,
            [("SCHILY.xattr.user.note".to_string(), b"kept".to_vec())]
        );
        assert_eq!(st.entries, 8);
    }
}
