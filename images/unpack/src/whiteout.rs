//! OCI whiteouts ([`crate::Options::whiteouts`]): `.wh.NAME` deletes NAME
//! from lower layers; `.wh..wh..opq` hides all lower-layer content of its
//! directory while keeping what the same layer put there, whether those
//! entries come before or after the marker. Other `.wh..wh.*` names are
//! AUFS metadata and ignored.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{self as rfs, FileType, Mode, OFlags};

use crate::error::{errno_err, Error, Result};
use crate::fsops;
use crate::path::EntryPath;
use crate::unpack::Unpacker;

/// Names starting with this are whiteouts.
pub(crate) const PREFIX: &[u8] = b".wh.";
/// The opaque directory marker.
pub(crate) const OPAQUE: &[u8] = b".wh..wh..opq";
/// AUFS metadata names.
pub(crate) const META_PREFIX: &[u8] = b".wh..wh.";

/// What a whiteout name means.
pub(crate) enum Whiteout<'a> {
    /// Hide the lower content of the directory.
    Opaque,
    /// AUFS metadata: nothing.
    Ignored,
    /// Delete this name of the directory.
    Delete(&'a [u8]),
}

/// Classifies a name that starts with [`PREFIX`].
pub(crate) fn classify(name: &[u8]) -> Result<Whiteout<'_>, &'static str> {
    if name == OPAQUE {
        return Ok(Whiteout::Opaque);
    }
    if name.starts_with(META_PREFIX) {
        return Ok(Whiteout::Ignored);
    }
    let victim = &name[PREFIX.len()..];
    if victim.is_empty() || victim == b"." || victim == b".." {
        return Err("whiteout names no file");
    }
    Ok(Whiteout::Delete(victim))
}

impl Unpacker<'_> {
    pub(crate) fn apply_whiteout(&mut self, path: &EntryPath, display: &str) -> Result<()> {
        let dir_comps = path.parent();
        let victim = match classify(path.file_name()) {
            Ok(Whiteout::Ignored) => return Ok(()),
            Ok(Whiteout::Opaque) => {
                // The marker implies the directory: create it if missing.
                let dir_key = dir_comps.join(&b'/');
                let dfd = self.open_parent(dir_comps, display)?;
                self.clean_opaque(dfd.as_fd(), &dir_key, display)?;
                self.cache = None;
                self.written.insert(dir_key);
                for i in 1..dir_comps.len() {
                    self.ancestors.insert(dir_comps[..i].join(&b'/'));
                }
                return Ok(());
            }
            Ok(Whiteout::Delete(v)) => v,
            Err(reason) => return Err(Error::unsafe_entry(display, reason)),
        };
        let mut victim_key = dir_comps.join(&b'/');
        if !victim_key.is_empty() {
            victim_key.push(b'/');
        }
        victim_key.extend_from_slice(victim);
        if self.written.contains(&victim_key) || self.ancestors.contains(&victim_key) {
            // Whiteouts only hide lower layers (OCI image spec).
            return Ok(());
        }
        let dfd = match self.root.dir(dir_comps, display, false, None) {
            Ok(fd) => fd,
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let vname = OsStr::from_bytes(victim);
        if let Some(t) = fsops::kind_at(dfd.as_fd(), vname, display)? {
            fsops::remove_at(dfd.as_fd(), vname, t == FileType::Directory, display)?;
            self.cache = None;
        }
        Ok(())
    }

    /// Removes everything under `dir` that this layer did not write.
    fn clean_opaque(&self, dir: BorrowedFd<'_>, dir_key: &[u8], display: &str) -> Result<()> {
        for n in fsops::list_dir(dir, display)? {
            let mut key = dir_key.to_vec();
            if !key.is_empty() {
                key.push(b'/');
            }
            key.extend_from_slice(&n);
            let cname = OsStr::from_bytes(&n);
            let Some(t) = fsops::kind_at(dir, cname, display)? else {
                continue;
            };
            let is_dir = t == FileType::Directory;
            let ours = self.written.contains(&key) || self.ancestors.contains(&key);
            if ours && is_dir {
                let sub = rfs::openat(
                    dir,
                    cname,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno_err(display, "opening directory"))?;
                self.clean_opaque(sub.as_fd(), &key, display)?;
            } else if !ours {
                fsops::remove_at(dir, cname, is_dir, display)?;
            }
        }
        Ok(())
    }
}
