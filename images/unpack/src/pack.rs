//! Archiving a host directory into a tar stream: the way back out of a
//! directory [`crate::unpack`] filled, with the same hardening.
//!
//! # Why here
//!
//! The directory may be written by someone hostile while it is read (a
//! running guest writes a volume over virtio-fs). A walk that joins path
//! strings and opens them (`tar::Builder::append_dir_all`, or
//! `append_path` with `follow_symlinks(false)`, which `lstat`s a path and
//! then `open`s it again) can be raced: a file swapped for a symlink to
//! `/etc/shadow` between the two calls, or a directory swapped for a
//! symlink to `/`, makes a root daemon archive host files. So every
//! lookup here goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`
//! from the root, like the unpacker's; symlinks are stored as symlinks
//! (their target text, never followed); the header of a regular file is
//! made from `fstat` of the descriptor that is then read, so what is
//! described is what is read. Entries are written by the crate's own
//! POSIX writer (`writer`), which the re-serialiser uses too.
//!
//! # What is kept
//!
//! Names byte for byte (sorted, so the same tree always gives the same
//! bytes), numeric owners, permission bits (setuid, setgid and sticky
//! included), modification times (seconds), symlinks, hard links between
//! files of the tree (by inode: the second name is a link entry), FIFOs and
//! device nodes (as entries: whether they are made again is the unpacker's
//! device policy). Not kept: extended attributes, access times, sparseness,
//! sockets (tar has no socket type; they are counted and left out).
//!
//! # A tree that changes while it is read
//!
//! No snapshot is taken: an entry that vanishes between the listing and
//! its read is left out; a file that shrinks while it is read is padded
//! with zeros to the size its header announced, one that grows is cut at
//! that size (both counted in [`PackStats::changed`]). Each entry is well
//! formed; the whole is as consistent as `tar` run on a live directory.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use tar::EntryType;

use crate::writer::{Spec, Writer};

use crate::beneath::RESOLVE;

/// Why a directory could not be archived.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading the directory failed.
    #[error("archiving {path:?}: {op}: {source}")]
    Io {
        /// The entry, relative to the root (`.` for the root).
        path: String,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
    /// The output could not be written (for a stream: the reader went away).
    #[error("writing the archive: {0}")]
    Write(#[source] io::Error),
}

/// What an archive walk wrote and left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Entries written (the root included).
    pub entries: u64,
    /// File data bytes written.
    pub bytes: u64,
    /// Hard link entries (second and later names of a file).
    pub hard_links: u64,
    /// Sockets left out.
    pub skipped_sockets: u64,
    /// Entries that vanished or changed size while being read.
    pub changed: u64,
}

/// Writes the tree below `root` (which is followed if a symlink: the
/// caller chose it) to `out` as an uncompressed tar stream, the root as
/// `./` and every other entry as a relative name, then the end-of-archive
/// marker. See the module documentation for what is kept.
pub fn pack(root: &Path, out: impl Write) -> Result<PackStats, PackError> {
    let shown = |p: &[u8]| {
        if p.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(p).into_owned()
        }
    };
    let io_err = |path: &[u8], op: &'static str| {
        let path = shown(path);
        move |e: Errno| PackError::Io {
            path,
            op,
            source: e.into(),
        }
    };
    let root_fd = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| PackError::Io {
        path: root.display().to_string(),
        op: "opening the directory",
        source: e.into(),
    })?;
    let mut w = Writer::new(out);
    let mut stats = PackStats::default();
    let st = rfs::fstat(&root_fd).map_err(io_err(b"", "reading metadata"))?;
    write_entry(&mut w, &mut stats, b"", &st, EntryType::Directory, None)?;

    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    // Directories being walked: their path and the children left to
    // write. Only one directory is open at a time, so the depth of the
    // tree costs memory, not descriptors or stack.
    let mut stack = vec![(Vec::new(), list(&root_fd, b"", &mut stats)?)];
    while let Some((dir, children)) = stack.last_mut() {
        let Some(child) = children.pop() else {
            stack.pop();
            continue;
        };
        let mut path = dir.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(&child.name);
        let st = child.stat;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => {
                // Listed through a descriptor resolved beneath the root: a
                // directory swapped for a symlink since its stat is refused
                // (ELOOP) and left out as changed.
                let fd = match open_beneath(&root_fd, &path, OFlags::RDONLY | OFlags::DIRECTORY) {
                    Ok(fd) => fd,
                    Err(e) if vanished(e) => {
                        stats.changed += 1;
                        continue;
                    }
                    Err(e) => return Err(io_err(&path, "opening directory")(e)),
                };
                let st = rfs::fstat(&fd).map_err(io_err(&path, "reading metadata"))?;
                write_entry(&mut w, &mut stats, &path, &st, EntryType::Directory, None)?;
                let children = list(&fd, &path, &mut stats)?;
                stack.push((path, children));
            }
            FileType::RegularFile => {
                // Non-blocking and no controlling terminal: harmless if the
                // name is swapped for a FIFO or device, which the fstat
                // below then refuses to read.
                let fd = match open_beneath(
                    &root_fd,
                    &path,
                    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
                ) {
                    Ok(fd) => fd,
                    Err(e) if vanished(e) => {
                        stats.changed += 1;
                        continue;
                    }
                    Err(e) => return Err(io_err(&path, "opening file")(e)),
                };
                let st = rfs::fstat(&fd).map_err(io_err(&path, "reading metadata"))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                    stats.changed += 1;
                    continue;
                }
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = links.get(&key) {
                        let first = first.clone();
                        write_entry(
                            &mut w,
                            &mut stats,
                            &path,
                            &st,
                            EntryType::Link,
                            Some(first.as_slice()),
                        )?;
                        stats.hard_links += 1;
                        continue;
                    }
                    links.insert(key, path.clone());
                }
                let size = st.st_size.max(0) as u64;
                let mut data = Exactly {
                    file: File::from(fd),
                    left: size,
                    short: false,
                    buf: &mut buf,
                };
                let spec = spec(&path, &st, EntryType::Regular, None, size);
                w.append(&spec, &mut data).map_err(|e| {
                    // A read error of the file comes back through the
                    // writer; tell it from a write error by its marker.
                    match e.get_ref().and_then(|i| i.downcast_ref::<ReadFailed>()) {
                        Some(r) => PackError::Io {
                            path: shown(&path),
                            op: "reading file",
                            source: io::Error::from_raw_os_error(r.0),
                        },
                        None => PackError::Write(e),
                    }
                })?;
                if data.short {
                    stats.changed += 1;
                }
                stats.entries += 1;
                stats.bytes += size;
            }
            FileType::Symlink => {
                let target = match read_link(&root_fd, &path) {
                    Ok(t) => t,
                    Err(e) if vanished(e) => {
                        stats.changed += 1;
                        continue;
                    }
                    Err(e) => return Err(io_err(&path, "reading symlink")(e)),
                };
                write_entry(
                    &mut w,
                    &mut stats,
                    &path,
                    &st,
                    EntryType::Symlink,
                    Some(target.as_slice()),
                )?;
            }
            FileType::Fifo => {
                write_entry(&mut w, &mut stats, &path, &st, EntryType::Fifo, None)?;
            }
            FileType::CharacterDevice => {
                write_entry(&mut w, &mut stats, &path, &st, EntryType::Char, None)?;
            }
            FileType::BlockDevice => {
                write_entry(&mut w, &mut stats, &path, &st, EntryType::Block, None)?;
            }
            _ => stats.skipped_sockets += 1,
        }
    }
    w.finish().map_err(PackError::Write)?;
    Ok(stats)
}

/// One child of a directory: its name and `lstat`.
struct Child {
    name: Vec<u8>,
    stat: rfs::Stat,
}

/// The children of the open directory `fd`, in reverse name order (they
/// are popped from the end).
fn list(fd: &OwnedFd, path: &[u8], stats: &mut PackStats) -> Result<Vec<Child>, PackError> {
    let err = |op: &'static str| {
        let path = if path.is_empty() {
            ".".to_string()
        } else {
            String::from_utf8_lossy(path).into_owned()
        };
        move |e: Errno| PackError::Io {
            path,
            op,
            source: e.into(),
        }
    };
    let mut dir = rfs::Dir::read_from(fd).map_err(err("listing directory"))?;
    let mut out = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent.map_err(err("listing directory"))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        match rfs::statat(fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => out.push(Child {
                name: name.to_vec(),
                stat,
            }),
            Err(e) if vanished(e) => stats.changed += 1,
            Err(e) => return Err(err("reading metadata")(e)),
        }
    }
    out.sort_by(|a, b| b.name.cmp(&a.name));
    Ok(out)
}

/// Opens `path` beneath `root` without following any symlink.
fn open_beneath(root: &OwnedFd, path: &[u8], flags: OFlags) -> rustix::io::Result<OwnedFd> {
    rfs::openat2(
        root,
        OsStr::from_bytes(path),
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        RESOLVE,
    )
}

/// The target of the symlink `path` beneath `root`: its parent resolved
/// without symlinks, the link itself read, never followed.
fn read_link(root: &OwnedFd, path: &[u8]) -> rustix::io::Result<Vec<u8>> {
    let (parent, name) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&b"."[..], path),
    };
    let pfd = open_beneath(root, parent, OFlags::PATH | OFlags::DIRECTORY)?;
    let target = rfs::readlinkat(pfd.as_fd(), OsStr::from_bytes(name), Vec::new())?;
    Ok(target.into_bytes())
}

/// Gone or swapped for something else since it was listed.
fn vanished(e: Errno) -> bool {
    matches!(e, Errno::NOENT | Errno::NOTDIR | Errno::LOOP | Errno::XDEV)
}

fn spec<'a>(
    path: &'a [u8],
    st: &rfs::Stat,
    kind: EntryType,
    link: Option<&'a [u8]>,
    size: u64,
) -> Spec<'a> {
    let device = matches!(kind, EntryType::Char | EntryType::Block).then(|| {
        let rdev = st.st_rdev;
        (rfs::major(rdev), rfs::minor(rdev))
    });
    Spec {
        path,
        kind,
        mode: st.st_mode & 0o7777,
        uid: u64::from(st.st_uid),
        gid: u64::from(st.st_gid),
        mtime: st.st_mtime.max(0) as u64,
        size,
        link,
        device,
        xattrs: &[],
    }
}

/// A data-less entry.
fn write_entry<W: Write>(
    w: &mut Writer<W>,
    stats: &mut PackStats,
    path: &[u8],
    st: &rfs::Stat,
    kind: EntryType,
    link: Option<&[u8]>,
) -> Result<(), PackError> {
    w.append(&spec(path, st, kind, link, 0), &mut io::empty())
        .map_err(PackError::Write)?;
    stats.entries += 1;
    Ok(())
}

/// A read error of the file being archived (not of the output).
#[derive(Debug)]
struct ReadFailed(i32);

impl std::fmt::Display for ReadFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl std::error::Error for ReadFailed {}

/// Exactly `left` bytes of `file`: zeros after an early end (the file
/// shrank while it was read).
struct Exactly<'a> {
    file: File,
    left: u64,
    short: bool,
    buf: &'a mut [u8],
}

impl Read for Exactly<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = out.len().min(self.left as usize).min(self.buf.len());
        let n = if self.short {
            0
        } else {
            loop {
                match self.file.read(&mut self.buf[..want]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(io::Error::other(ReadFailed(
                            e.raw_os_error().unwrap_or(libc::EIO),
                        )))
                    }
                }
            }
        };
        if n == 0 {
            self.short = true;
            out[..want].fill(0);
            self.left -= want as u64;
            return Ok(want);
        }
        out[..n].copy_from_slice(&self.buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    /// (name, type, mode, link target, data) of each entry, in order.
    type Listing = Vec<(String, EntryType, u32, String, Vec<u8>)>;

    fn listing(data: &[u8]) -> Listing {
        let mut a = tar::Archive::new(data);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
                let h = e.header().clone();
                let link = e
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
                    .unwrap_or_default();
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                (name, h.entry_type(), h.mode().unwrap(), link, body)
            })
            .collect()
    }

    #[test]
    fn a_tree_is_archived_sorted_with_links_as_links_and_modes_kept() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "host secret").unwrap();
        let r = d.path();
        fs::create_dir(r.join("sub")).unwrap();
        fs::write(r.join("sub/b"), "bee").unwrap();
        fs::write(r.join("a"), "ay").unwrap();
        fs::set_permissions(r.join("a"), fs::Permissions::from_mode(0o4751)).unwrap();
        fs::set_permissions(r.join("sub"), fs::Permissions::from_mode(0o1777)).unwrap();
        symlink(outside.path().join("secret"), r.join("out")).unwrap();
        symlink(outside.path(), r.join("outdir")).unwrap();
        symlink("sub/b", r.join("rel")).unwrap();
        fs::hard_link(r.join("a"), r.join("z-hard")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        let sock = std::os::unix::net::UnixListener::bind(r.join("sock")).unwrap();

        let mut out = Vec::new();
        let stats = pack(r, &mut out).unwrap();
        drop(sock);
        let l = listing(&out);
        let names: Vec<_> = l.iter().map(|e| (e.0.as_str(), e.1)).collect();
        assert_eq!(
            names,
            [
                ("./", EntryType::Directory),
                ("a", EntryType::Regular),
                ("fifo", EntryType::Fifo),
                ("out", EntryType::Symlink),
                ("outdir", EntryType::Symlink),
                ("rel", EntryType::Symlink),
                ("sub/", EntryType::Directory),
                ("sub/b", EntryType::Regular),
                ("z-hard", EntryType::Link),
            ]
        );
        assert_eq!(l[1].2, 0o4751, "setuid and the other bits are kept");
        assert_eq!(l[1].4, b"ay");
        assert_eq!(l[2].2, 0o640);
        assert_eq!(l[3].3, outside.path().join("secret").display().to_string());
        assert!(
            l.iter().all(|e| e.4 != b"host secret"),
            "links are stored, never followed"
        );
        assert_eq!(l[5].3, "sub/b");
        assert_eq!(l[6].2, 0o1777);
        assert_eq!(l[8].3, "a", "the second name of a file is a hard link");
        assert_eq!(stats.skipped_sockets, 1);
        assert_eq!(stats.hard_links, 1);
        assert_eq!(stats.bytes, 5);
        assert_eq!(stats.changed, 0);

        // Owners and times come from the files.
        let mut a = tar::Archive::new(&out[..]);
        let e = a.entries().unwrap().nth(1).unwrap().unwrap();
        let md = fs::symlink_metadata(r.join("a")).unwrap();
        assert_eq!(e.header().uid().unwrap(), u64::from(md.uid()));
        assert_eq!(e.header().mtime().unwrap(), md.mtime() as u64);

        // The same tree gives the same bytes.
        let sock = std::os::unix::net::UnixListener::bind(r.join("sock2")).unwrap();
        fs::remove_file(r.join("sock")).unwrap();
        let mut again = Vec::new();
        pack(r, &mut again).unwrap();
        drop(sock);
        assert_eq!(out, again);
    }

    #[test]
    fn a_symlinked_directory_below_the_root_is_not_walked() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "host secret").unwrap();
        symlink(outside.path(), d.path().join("link")).unwrap();
        let mut out = Vec::new();
        pack(d.path(), &mut out).unwrap();
        let l = listing(&out);
        assert_eq!(l.len(), 2, "{:?}", l);
        assert!(!String::from_utf8_lossy(&out).contains("host secret"));
    }

    #[test]
    fn a_file_that_shrinks_is_padded_and_counted() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "hello").unwrap();
        let file = File::open(d.path().join("f")).unwrap();
        let mut buf = vec![0u8; 4];
        let mut r = Exactly {
            file,
            left: 8,
            short: false,
            buf: &mut buf,
        };
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hello\0\0\0");
        assert!(r.short);
    }

    #[test]
    fn an_unreadable_root_and_a_closed_output_are_errors() {
        let e = pack(Path::new("/nonexistent/dir"), Vec::new()).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/dir"), "{e}");

        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("f"), "x").unwrap();
        assert!(matches!(pack(d.path(), Closed), Err(PackError::Write(_))));
    }
}
