//! Writing OCI layer tarballs: from planned COPY/ADD entries, and from an
//! overlayfs upper directory (the changes a RUN step made), whose
//! whiteouts become OCI whiteouts.
//!
//! overlayfs records a deleted lower file as a character device 0:0 with
//! the deleted name, and a directory whose lower content is hidden (it was
//! removed and made again) with the xattr `trusted.overlay.opaque=y`. The
//! OCI image spec writes these as an empty file `.wh.NAME` and a marker
//! `DIR/.wh..wh..opq`. Other `trusted.overlay.*` xattrs are overlayfs
//! bookkeeping and are dropped.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use mvm_images::manifest::Descriptor;
use mvm_images::Store;

/// Extended attributes: (name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Owner, mode and time of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (and setuid/setgid/sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds.
    pub mtime: u64,
}

impl Meta {
    /// From file metadata.
    pub fn of(md: &fs::Metadata) -> Meta {
        Meta {
            mode: md.mode() & 0o7777,
            uid: u64::from(md.uid()),
            gid: u64::from(md.gid()),
            mtime: md.mtime().max(0) as u64,
        }
    }
}

/// Paths a RUN step may change that are not part of its result: Docker
/// bind-mounts these three over the container's files.
const RUNTIME_FILES: &[&str] = &["etc/hosts", "etc/hostname", "etc/resolv.conf"];
/// Mount points guest init creates when the image lacks them; left out of
/// the layer when the step put nothing else there.
const MOUNT_POINTS: &[&str] = &[
    "proc",
    "sys",
    "sys/fs",
    "sys/fs/cgroup",
    "dev",
    "dev/pts",
    "dev/shm",
    "tmp",
];

/// Builds an uncompressed layer tarball.
pub struct LayerWriter {
    builder: tar::Builder<BufWriter<File>>,
    entries: u64,
}

impl LayerWriter {
    /// Creates the tarball at `path`.
    pub fn create(path: &Path) -> io::Result<LayerWriter> {
        let f = File::create(path)?;
        let mut builder = tar::Builder::new(BufWriter::with_capacity(256 * 1024, f));
        builder.mode(tar::HeaderMode::Complete);
        Ok(LayerWriter {
            builder,
            entries: 0,
        })
    }

    /// Entries written so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    fn header(kind: tar::EntryType, m: &Meta, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(m.mode);
        h.set_uid(m.uid);
        h.set_gid(m.gid);
        h.set_mtime(m.mtime);
        h.set_size(size);
        h
    }

    fn pax(&mut self, name: &str, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        if xattrs.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        for (k, v) in xattrs {
            let mut rec = b"SCHILY.xattr.".to_vec();
            rec.extend_from_slice(k);
            rec.push(b'=');
            rec.extend_from_slice(v);
            rec.push(b'\n');
            // The length prefix counts itself: find the fixed point.
            let mut len = rec.len() + 2;
            while len.to_string().len() + 1 + rec.len() != len {
                len = len.to_string().len() + 1 + rec.len();
            }
            data.extend_from_slice(format!("{len} ").as_bytes());
            data.extend_from_slice(&rec);
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        let short: String = name
            .chars()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        self.builder.append_data(
            &mut h,
            format!("PaxHeaders/{}", short.trim_start_matches('/')),
            &data[..],
        )
    }

    /// A directory.
    pub fn dir(&mut self, name: &str, m: &Meta, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
        self.pax(name, xattrs)?;
        let mut h = Self::header(tar::EntryType::Directory, m, 0);
        self.builder.append_data(
            &mut h,
            format!("{}/", name.trim_end_matches('/')),
            io::empty(),
        )?;
        self.entries += 1;
        Ok(())
    }

    /// A regular file with content from `r` (exactly `size` bytes).
    pub fn file(
        &mut self,
        name: &str,
        m: &Meta,
        size: u64,
        r: impl Read,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        self.pax(name, xattrs)?;
        let mut h = Self::header(tar::EntryType::Regular, m, size);
        self.builder.append_data(&mut h, name, r.take(size))?;
        self.entries += 1;
        Ok(())
    }

    /// A symlink.
    pub fn symlink(&mut self, name: &str, target: &Path, m: &Meta) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Symlink, m, 0);
        self.builder.append_link(&mut h, name, target)?;
        self.entries += 1;
        Ok(())
    }

    /// A hard link to an earlier entry of this layer.
    pub fn hardlink(&mut self, name: &str, target: &str, m: &Meta) -> io::Result<()> {
        let mut h = Self::header(tar::EntryType::Link, m, 0);
        self.builder.append_link(&mut h, name, target)?;
        self.entries += 1;
        Ok(())
    }

    /// A FIFO or device node.
    pub fn special(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        m: &Meta,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let mut h = Self::header(kind, m, 0);
        h.set_device_major(rdev.0)?;
        h.set_device_minor(rdev.1)?;
        self.builder.append_data(&mut h, name, io::empty())?;
        self.entries += 1;
        Ok(())
    }

    /// An OCI whiteout deleting `rel` from lower layers.
    pub fn whiteout(&mut self, rel: &str, mtime: u64) -> io::Result<()> {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (format!("{p}/"), n),
            None => (String::new(), rel),
        };
        let m = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
        };
        self.file(&format!("{parent}.wh.{name}"), &m, 0, io::empty(), &[])
    }

    /// An OCI opaque marker: lower content of `dir` is hidden.
    pub fn opaque(&mut self, dir: &str, mtime: u64) -> io::Result<()> {
        let m = Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime,
        };
        self.file(
            &format!("{}/.wh..wh..opq", dir.trim_end_matches('/')),
            &m,
            0,
            io::empty(),
            &[],
        )
    }

    /// Ends the archive and syncs the file.
    pub fn finish(self) -> io::Result<()> {
        let w = self.builder.into_inner()?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    }
}

/// The xattrs of `path` worth keeping (user., security., trusted. except
/// overlayfs' own, system.posix_acl_*), without following symlinks.
pub fn xattrs_of(path: &Path) -> io::Result<(Xattrs, bool)> {
    let mut out = Vec::new();
    let mut opaque = false;
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok((out, false)),
        Err(e) => return Err(e),
    };
    for n in names {
        let k = n.as_bytes().to_vec();
        if k.starts_with(b"trusted.overlay.") {
            if k == b"trusted.overlay.opaque" {
                opaque = xattr::get(path, &n)?.as_deref() == Some(b"y");
            }
            continue;
        }
        let keep = k.starts_with(b"user.")
            || k.starts_with(b"security.")
            || k.starts_with(b"trusted.")
            || k.starts_with(b"system.posix_acl_");
        if keep {
            if let Some(v) = xattr::get(path, &n)? {
                out.push((k, v));
            }
        }
    }
    out.sort();
    Ok((out, opaque))
}

/// Counts of what an upper directory held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpperStats {
    /// Entries written (whiteouts included).
    pub entries: u64,
    /// Deletions (whiteouts).
    pub whiteouts: u64,
    /// Opaque directories.
    pub opaque: u64,
}

/// Converts an overlayfs upper directory into a layer.
pub fn upper_to_layer(upper: &Path, out: &mut LayerWriter) -> io::Result<UpperStats> {
    let mut stats = UpperStats::default();
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    walk_upper(upper, "", out, &mut stats, &mut links)?;
    Ok(stats)
}

fn walk_upper(
    dir: &Path,
    rel: &str,
    out: &mut LayerWriter,
    stats: &mut UpperStats,
    links: &mut HashMap<(u64, u64), String>,
) -> io::Result<()> {
    let mut names: Vec<_> = fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let name = name.to_string_lossy().into_owned();
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let md = fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        let m = Meta::of(&md);
        if ft.is_char_device() && md.rdev() == 0 {
            out.whiteout(&r, m.mtime)?;
            stats.whiteouts += 1;
            stats.entries += 1;
            continue;
        }
        if ft.is_dir() {
            let (x, opaque) = xattrs_of(&path)?;
            let empty = fs::read_dir(&path)?.next().is_none();
            if empty && !opaque && MOUNT_POINTS.contains(&r.as_str()) {
                continue;
            }
            out.dir(&r, &m, &x)?;
            stats.entries += 1;
            if opaque {
                out.opaque(&r, m.mtime)?;
                stats.opaque += 1;
                stats.entries += 1;
            }
            walk_upper(&path, &r, out, stats, links)?;
            continue;
        }
        if RUNTIME_FILES.contains(&r.as_str()) {
            continue;
        }
        stats.entries += 1;
        if ft.is_symlink() {
            out.symlink(&r, &fs::read_link(&path)?, &m)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    out.hardlink(&r, &first.clone(), &m)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), r.clone());
            }
            let (x, _) = xattrs_of(&path)?;
            out.file(&r, &m, md.len(), File::open(&path)?, &x)?;
        } else {
            let kind = if ft.is_fifo() {
                tar::EntryType::Fifo
            } else if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                // Sockets cannot be archived; Docker skips them too.
                stats.entries -= 1;
                continue;
            };
            let rdev = md.rdev();
            out.special(&r, kind, &m, (libc::major(rdev), libc::minor(rdev)))?;
        }
    }
    Ok(())
}

/// Unpacks the layers of an image into `dest` (used to read the
/// filesystem of another stage or image for COPY --from).
pub fn unpack_layers(store: &Store, layers: &[Descriptor], dest: &Path) -> io::Result<()> {
    let opts = mvm_images::UnpackOptions {
        devices: mvm_images::DevicePolicy::Skip,
        ..Default::default()
    };
    let mut stats = mvm_images::layer::UnpackStats::default();
    for l in layers {
        let f = store.open_blob(&l.digest).map_err(io::Error::other)?;
        let declared = mvm_images::manifest::layer_compression(&l.media_type).ok();
        mvm_images::layer::apply_layer(dest, f, declared, None, &opts, &mut stats)
            .map_err(io::Error::other)?;
    }
    Ok(())
}

/// Reads one file of an image from its layers, topmost first, honouring
/// whiteouts; None if absent. Used to look up users and groups for
/// `--chown name:group` without building the whole filesystem.
pub fn read_file_in_layers(
    store: &Store,
    layers: &[Descriptor],
    path: &str,
    max: u64,
) -> io::Result<Option<Vec<u8>>> {
    let want = path.trim_start_matches('/');
    let parents: Vec<String> = {
        let mut v = Vec::new();
        let mut cur = String::new();
        for c in want.split('/') {
            if !cur.is_empty() {
                v.push(cur.clone());
                cur.push('/');
            }
            cur.push_str(c);
        }
        v
    };
    for l in layers.iter().rev() {
        let f = store.open_blob(&l.digest).map_err(io::Error::other)?;
        let (plain, _) = mvm_images::layer::decompress(f, None)?;
        let mut ar = tar::Archive::new(plain);
        let mut hidden = false;
        for e in ar.entries()? {
            let mut e = e?;
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let name = name
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            if name == want && e.header().entry_type().is_file() {
                let mut buf = Vec::new();
                (&mut e).take(max).read_to_end(&mut buf)?;
                return Ok(Some(buf));
            }
            if let Some((dir, base)) = name.rsplit_once('/').or(Some(("", name.as_str()))) {
                if let Some(victim) = base.strip_prefix(".wh.") {
                    let target = if dir.is_empty() {
                        victim.to_string()
                    } else {
                        format!("{dir}/{victim}")
                    };
                    if victim == ".wh..opq" {
                        if parents.iter().any(|p| *p == dir) || dir.is_empty() {
                            hidden = true;
                        }
                    } else if target == want || parents.contains(&target) {
                        hidden = true;
                    }
                }
            }
        }
        if hidden {
            return Ok(None);
        }
    }
    Ok(None)
}

/// Writes `data` to a new file and returns its path (helper for tests and
/// heredocs).
pub fn write_temp(dir: &Path, name: &str, data: &[u8]) -> io::Result<PathBuf> {
    let p = dir.join(name);
    let mut f = File::create(&p)?;
    f.write_all(data)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    type Entry = (String, tar::EntryType, Vec<(String, Vec<u8>)>);

    fn entries(tar_path: &Path) -> Vec<Entry> {
        let mut ar = tar::Archive::new(File::open(tar_path).unwrap());
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

    fn mknod_whiteout(p: &Path) {
        let c = CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string; mknod has no other memory effects.
        let r = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
        assert_eq!(r, 0, "mknod needs root: {}", io::Error::last_os_error());
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
        mknod_whiteout(&up.join("etc/deleted"));
        xattr::set(up.join("app/fresh"), "trusted.overlay.opaque", b"y").unwrap();
        xattr::set(up.join("app"), "trusted.overlay.origin", b"junk").unwrap();
        xattr::set(up.join("app/new.txt"), "user.note", b"kept").unwrap();
        let out = d.path().join("layer.tar");
        let mut w = LayerWriter::create(&out).unwrap();
        let st = upper_to_layer(&up, &mut w).unwrap();
        w.finish().unwrap();
        assert_eq!(st.whiteouts, 1);
        assert_eq!(st.opaque, 1);
        let e = entries(&out);
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
            "etc/hosts and the empty /proc mount point are left out"
        );
        assert!(
            e[0].2.is_empty(),
            "overlay xattrs are dropped: {:?}",
            e[0].2
        );
        assert_eq!(e[1].1, tar::EntryType::Regular);
        assert_eq!(e[5].1, tar::EntryType::Link, "second name is a hard link");
        assert_eq!(e[4].1, tar::EntryType::Symlink);
        assert_eq!(e[7].1, tar::EntryType::Regular);
        // The user xattr is on whichever name came first (again.txt).
        assert_eq!(
            e[1].2,
            [("SCHILY.xattr.user.note".to_string(), b"kept".to_vec())]
        );
        // The result applies cleanly with the store's unpacker, and the
        // whiteout deletes the lower file.
        let root = d.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/deleted"), "old").unwrap();
        let mut stats = mvm_images::layer::UnpackStats::default();
        mvm_images::layer::apply_layer(
            &root,
            File::open(&out).unwrap(),
            None,
            None,
            &Default::default(),
            &mut stats,
        )
        .unwrap();
        assert!(!root.join("etc/deleted").exists());
        assert_eq!(
            fs::read_to_string(root.join("app/again.txt")).unwrap(),
            "new"
        );
    }
}
