//! A minimal writer of POSIX (ustar + PAX) tar archives.
//!
//! Hand-written rather than `tar::Builder` because the re-serialiser must
//! write names and symlink targets byte for byte: the builder takes them
//! as `std::path::Path` and normalises them (it drops `.` components of a
//! symlink target and refuses some names), which would make the clean
//! archive differ from what was validated. Names or link targets over the
//! 100-byte header fields, numbers over the octal fields and xattrs go in
//! a PAX extended header in front of the entry, as POSIX specifies; every
//! current reader (GNU tar, bsdtar, Go's archive/tar, the `tar` crate)
//! understands it.

use std::io::{self, Read, Write};

use tar::EntryType;

const BLOCK: usize = 512;
/// Largest value of an 11-digit octal field (size, mtime).
const MAX_OCTAL_11: u64 = 0o77_777_777_777;
/// Largest value of a 7-digit octal field (uid, gid).
const MAX_OCTAL_7: u64 = 0o7_777_777;

/// One entry to write.
pub(crate) struct Spec<'a> {
    /// Normalised name, without a trailing `/` (empty: the root).
    pub path: &'a [u8],
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Data size (regular files only).
    pub size: u64,
    /// Symlink or hard link target.
    pub link: Option<&'a [u8]>,
    /// Device numbers.
    pub device: Option<(u32, u32)>,
    /// Extended attributes, already filtered.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

pub(crate) struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub(crate) fn new(out: W) -> Self {
        Writer { out }
    }

    /// Writes `spec`, then exactly `spec.size` bytes from `data` (an
    /// error if it ends early) and the padding.
    pub(crate) fn append(&mut self, spec: &Spec<'_>, data: &mut dyn Read) -> io::Result<()> {
        let mut name = spec.path.to_vec();
        if name.is_empty() {
            name.extend_from_slice(b".");
        }
        if spec.kind == EntryType::Directory {
            name.push(b'/');
        }
        let mut pax: Vec<u8> = Vec::new();
        if name.len() > 100 {
            record(&mut pax, b"path", &name);
        }
        if let Some(l) = spec.link {
            if l.len() > 100 {
                record(&mut pax, b"linkpath", l);
            }
        }
        if spec.size > MAX_OCTAL_11 {
            record(&mut pax, b"size", spec.size.to_string().as_bytes());
        }
        if spec.mtime > MAX_OCTAL_11 {
            record(&mut pax, b"mtime", spec.mtime.to_string().as_bytes());
        }
        if spec.uid > MAX_OCTAL_7 {
            record(&mut pax, b"uid", spec.uid.to_string().as_bytes());
        }
        if spec.gid > MAX_OCTAL_7 {
            record(&mut pax, b"gid", spec.gid.to_string().as_bytes());
        }
        for (k, v) in spec.xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            let mut h = tar::Header::new_ustar();
            set_field(&mut h.as_old_mut().name, b"././@PaxHeader");
            h.set_entry_type(EntryType::XHeader);
            h.set_mode(0o644);
            h.set_size(pax.len() as u64);
            h.set_cksum();
            self.out.write_all(h.as_bytes())?;
            self.out.write_all(&pax)?;
            self.pad(pax.len() as u64)?;
        }

        let mut h = tar::Header::new_ustar();
        set_field(&mut h.as_old_mut().name, &name);
        if let Some(l) = spec.link {
            set_field(&mut h.as_old_mut().linkname, l);
        }
        h.set_entry_type(spec.kind);
        h.set_mode(spec.mode);
        // Values over the octal fields are also in the PAX header; the
        // tar crate then stores them in binary, which readers that ignore
        // PAX understand too.
        h.set_uid(spec.uid);
        h.set_gid(spec.gid);
        h.set_mtime(spec.mtime);
        h.set_size(spec.size);
        if let Some((major, minor)) = spec.device {
            h.set_device_major(major)?;
            h.set_device_minor(minor)?;
        }
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        if spec.size > 0 {
            let n = io::copy(&mut data.take(spec.size), &mut self.out)?;
            if n != spec.size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("file data is truncated ({n} of {} bytes)", spec.size),
                ));
            }
            self.pad(spec.size)?;
        }
        Ok(())
    }

    /// Flushes and returns the output, without an end-of-archive marker
    /// (the entries are part of a tar the caller goes on writing).
    pub(crate) fn into_inner(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes the end-of-archive marker and returns the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }
}

/// Copies as much of `value` as fits (a longer value is also in PAX).
fn set_field(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Appends one PAX record, `"<len> <key>=<value>\n"`, where `<len>` counts
/// the whole record, its own digits included.
fn record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len += 1;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths_count_themselves() {
        for n in [0usize, 1, 4, 5, 6, 90, 93, 94, 95, 995, 996, 997] {
            let mut out = Vec::new();
            record(&mut out, b"k", &vec![b'v'; n]);
            let (len, _) = std::str::from_utf8(&out).unwrap().split_once(' ').unwrap();
            assert_eq!(
                len.parse::<usize>().unwrap(),
                out.len(),
                "value of {n} bytes"
            );
        }
    }

    #[test]
    fn long_names_and_links_round_trip_through_the_tar_crate() {
        let long = "d/".repeat(80) + "file";
        let target = "./".to_string() + &"../".repeat(50) + "x/./y";
        let mut w = Writer::new(Vec::new());
        w.append(
            &Spec {
                path: long.as_bytes(),
                kind: EntryType::Regular,
                mode: 0o640,
                uid: 1 << 30,
                gid: 7,
                mtime: 1_700_000_000,
                size: 3,
                link: None,
                device: None,
                xattrs: &[(b"user.k".to_vec(), b"v\0w".to_vec())],
            },
            &mut &b"abc"[..],
        )
        .unwrap();
        w.append(
            &Spec {
                path: b"l",
                kind: EntryType::Symlink,
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime: 0,
                size: 0,
                link: Some(target.as_bytes()),
                device: None,
                xattrs: &[],
            },
            &mut io::empty(),
        )
        .unwrap();
        let out = w.finish().unwrap();
        let mut ar = tar::Archive::new(&out[..]);
        let mut es = ar.entries().unwrap();
        let mut e = es.next().unwrap().unwrap();
        assert_eq!(&*e.path_bytes(), long.as_bytes());
        assert_eq!(e.header().uid().unwrap(), 1 << 30);
        assert_eq!(e.header().mode().unwrap(), 0o640);
        let x: Vec<_> = e
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| r.unwrap())
            .filter(|r| r.key().unwrap().starts_with("SCHILY"))
            .map(|r| (r.key().unwrap().to_string(), r.value_bytes().to_vec()))
            .collect();
        assert_eq!(x, [("SCHILY.xattr.user.k".to_string(), b"v\0w".to_vec())]);
        let mut data = String::new();
        e.read_to_string(&mut data).unwrap();
        assert_eq!(data, "abc");
        let l = es.next().unwrap().unwrap();
        assert_eq!(&*l.link_name_bytes().unwrap(), target.as_bytes());
        assert!(es.next().is_none());
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = Writer::new(Vec::new());
        let spec = Spec {
            path: b"f",
            kind: EntryType::Regular,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 10,
            link: None,
            device: None,
            xattrs: &[],
        };
        assert!(w.append(&spec, &mut &b"abc"[..]).is_err());
    }
}
