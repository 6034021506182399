//! Writing OCI layer tarballs from planned COPY/ADD entries, and reading
//! image files back from layers. (A RUN step's layer is written by the
//! guest agent from the overlay's upper directory, in
//! `mvm_protocol::layer`'s form, and checked on its way in by
//! [`crate::vm`].)

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::MetadataExt;
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

    /// Entries written so far by the typed methods (those appended with
    /// [`LayerWriter::append_raw`] are not counted).
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Lets `write` append entries straight to the tarball: a fragment
    /// that is already clean and has no end-of-archive marker, such as
    /// `mvm_unpack::sanitize_into_layer`'s output (which checks every
    /// entry; nothing is checked here).
    pub fn append_raw<T, E>(
        &mut self,
        write: impl FnOnce(&mut BufWriter<File>) -> Result<T, E>,
    ) -> Result<T, E> {
        write(self.builder.get_mut())
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
        let data = mvm_protocol::layer::pax_xattr_records(xattrs);
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
