//! Re-serialising a hostile tar into a clean one, without touching the
//! filesystem.
//!
//! Every entry is checked with the same rules as unpacking (names, limits,
//! types, devices, setuid, xattrs), plus what unpacking learns from the
//! filesystem, here learnt from the archive itself:
//!
//! - no entry may lie beneath a path that an earlier entry made a
//!   non-directory (the `link -> /etc`, then `link/passwd` attack, which
//!   some extractors fall for);
//! - a directory entry may not take a path an earlier entry made a
//!   non-directory (extractors disagree on whether they then follow it);
//! - a hard link must name an earlier non-directory entry, through
//!   directories only.
//!
//! What comes out is a POSIX tar written by this crate: normalised names,
//! allowed entry types only, numeric owners, no user or group names, PAX
//! records only for long names, large numbers and the kept xattrs. A
//! reader that trusts the output does not need to trust the input.
//!
//! [`sanitize_into_layer`] writes the same clean entries into a layer the
//! caller is writing, beneath one of its directories (an archive that
//! Docker's `ADD` extracts into the image).

use std::collections::HashMap;
use std::io::{self, Read, Write};

use tar::EntryType as T;

use crate::budget;
use crate::entry;
use crate::error::{io_err, Error, Result};
use crate::options::{DevicePolicy, Existing, Options, Stats};
use crate::path::{self, EntryPath, TopRename};
use crate::whiteout;
use crate::writer::{Spec, Writer};

/// What an earlier entry left at a path.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    NonDir,
}

/// Reads the tar `input`, validates every entry under `opts`, and writes a
/// clean archive to `output`, which is returned. On error, `output` holds
/// a prefix of the clean archive (without the end marker): discard it.
///
/// [`Options::existing`] only matters for the root entry (`./`): kept
/// with [`Existing::Replace`], dropped with [`Existing::Merge`] (an
/// extractor would apply its mode to the directory it extracts into).
/// [`Options::preserve_ownership`] does not apply: owners are copied.
pub fn sanitize<R: Read, W: Write>(
    input: R,
    output: W,
    opts: &Options,
    stats: &mut Stats,
) -> Result<W> {
    let s = Sanitizer::new(output, opts, stats, &Placement::default(), false)?;
    let (out, end) = s.run(input)?;
    out.finish()
        .map_err(io_err(&end, "writing the output archive"))
}

/// Where [`sanitize_into_layer`] puts an archive's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The layer directory the entries land beneath: with `usr/src`, the
    /// entry `a/b` becomes `usr/src/a/b` and a hard link to `a/f` links
    /// to `usr/src/a/f`. Validated and normalised as entry names are (not
    /// absolute, no `..`, no NUL); empty: the layer's top. The archive's
    /// root entry (`./`) stands for this directory.
    pub beneath: Vec<u8>,
    /// Owner and group given to every entry instead of the archive's
    /// (`ADD --chown`); None keeps the archive's numeric owners.
    pub owner: Option<(u64, u64)>,
}

/// [`sanitize`] for an archive whose entries become part of an OCI layer
/// tar that the caller is writing to `output` (Docker's `ADD` of a local
/// archive): every entry is checked with the same rules, and then
///
/// - its name, and a hard link's target, is placed beneath
///   [`Placement::beneath`]; the placed name must still be within
///   [`Limits::max_path_len`](crate::Limits::max_path_len), so the
///   layer's reader accepts it;
/// - its owner is [`Placement::owner`] when given;
/// - with [`Options::whiteouts`] off, a name starting with `.wh.` is
///   refused: it is a plain file of the archive, but a layer's reader
///   would take it for a whiteout and delete files of lower layers;
/// - no end-of-archive marker is written: `output`'s tar goes on, and is
///   returned flushed.
///
/// The checks know this archive only: what the rest of the layer, or a
/// lower layer, has at the same paths is for the layer's reader
/// ([`unpack`](crate::unpack) with [`Options::layer`]). On error,
/// `output` holds part of the entries: discard the layer.
pub fn sanitize_into_layer<R: Read, W: Write>(
    input: R,
    output: W,
    placement: &Placement,
    opts: &Options,
    stats: &mut Stats,
) -> Result<W> {
    let s = Sanitizer::new(output, opts, stats, placement, true)?;
    let (out, end) = s.run(input)?;
    out.into_inner()
        .map_err(io_err(&end, "writing the output archive"))
}

struct Sanitizer<'a, W: Write> {
    opts: &'a Options,
    stats: &'a mut Stats,
    out: Writer<W>,
    kinds: HashMap<Vec<u8>, Kind>,
    top: TopRename,
    /// [`Placement::beneath`], normalised.
    beneath: Vec<u8>,
    owner: Option<(u64, u64)>,
    /// The output is part of a layer: with whiteouts off, `.wh.` names
    /// are refused.
    in_layer: bool,
}

impl<'a, W: Write> Sanitizer<'a, W> {
    fn new(
        output: W,
        opts: &'a Options,
        stats: &'a mut Stats,
        placement: &Placement,
        in_layer: bool,
    ) -> Result<Self> {
        if let Some(n) = &opts.rename_top {
            if !path::is_component(n) {
                return Err(Error::unsafe_entry(
                    &String::from_utf8_lossy(n),
                    "the name to give the archive's top-level entry must be a single path component",
                ));
            }
        }
        let beneath = EntryPath::parse(&placement.beneath, opts.limits.max_path_len)
            .map_err(|_| {
                Error::unsafe_entry(
                    &String::from_utf8_lossy(&placement.beneath),
                    "the directory to place the archive beneath must be a relative path without '..' or NUL, within the length limit",
                )
            })?
            .to_bytes();
        Ok(Sanitizer {
            opts,
            stats,
            out: Writer::new(output),
            kinds: HashMap::new(),
            top: TopRename::new(opts.rename_top.clone()),
            beneath,
            owner: placement.owner,
            in_layer,
        })
    }

    /// Checks and writes every entry of `input`; returns the writer
    /// (without the end marker) and the last entry's name, for errors.
    fn run<R: Read>(mut self, input: R) -> Result<(Writer<W>, String)> {
        let last = budget::for_each_entry(input, self.opts.limits.max_header_size, |entry| {
            self.entry(entry)
        })?;
        Ok((self.out, last.unwrap_or_default()))
    }

    /// `key` (a normalised archive name) placed beneath
    /// [`Sanitizer::beneath`]; None if that is over the length limit.
    fn placed(&self, key: &[u8]) -> Option<Vec<u8>> {
        let placed = match (self.beneath.is_empty(), key.is_empty()) {
            (true, _) => key.to_vec(),
            (false, true) => self.beneath.clone(),
            (false, false) => [&self.beneath[..], b"/", key].concat(),
        };
        (placed.len() <= self.opts.limits.max_path_len).then_some(placed)
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(String, u64)> {
        let limits = self.opts.limits;
        let raw = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw).into_owned();
        let unsafe_ = |reason| Error::unsafe_entry(&display, reason);
        let mut path =
            EntryPath::parse(&raw, limits.max_path_len).map_err(|e| unsafe_(e.reason(false)))?;
        self.stats.entries += 1;
        if self.stats.entries > limits.max_entries {
            return Err(Error::TooManyEntries {
                entry: display,
                limit: limits.max_entries,
            });
        }
        let meta = entry::read(entry, &display)?;
        let stored = meta.stored_size;
        let kind = match meta.kind {
            T::XGlobalHeader | T::XHeader => return Ok((display, stored)),
            T::Regular | T::Continuous | T::GNUSparse => T::Regular,
            k @ (T::Directory | T::Symlink | T::Link | T::Fifo | T::Char | T::Block) => k,
            other => {
                return Err(Error::UnsupportedType {
                    entry: display,
                    kind: other.as_byte() as char,
                })
            }
        };
        self.top.apply(&mut path, false).map_err(unsafe_)?;
        let key = path.to_bytes();
        let placed = self.placed(&key).ok_or_else(|| {
            unsafe_("path, placed beneath the destination directory, is longer than the limit")
        })?;
        let (mode, dropped) = entry::effective_mode(meta.mode, self.opts);
        let (uid, gid) = self.owner.unwrap_or((meta.uid, meta.gid));
        let mut spec = Spec {
            path: &placed,
            kind,
            mode,
            uid,
            gid,
            mtime: u64::try_from(meta.mtime).unwrap_or(0),
            size: 0,
            link: None,
            device: None,
            xattrs: &[],
        };

        if path.is_root() {
            if kind != T::Directory {
                return Err(unsafe_("entry would replace the root directory"));
            }
            if self.opts.existing == Existing::Merge {
                return Ok((display, stored));
            }
        } else if let Some(reason) = self.parent_problem(&key) {
            return Err(unsafe_(reason));
        }

        if self.opts.whiteouts && !path.is_root() && path.file_name().starts_with(whiteout::PREFIX)
        {
            whiteout::classify(path.file_name()).map_err(unsafe_)?;
            // An empty regular file, whatever the input made of it.
            spec.kind = T::Regular;
            spec.mode = meta.mode & 0o777;
            self.write(&spec, &mut io::empty(), &display)?;
            self.stats.whiteouts += 1;
            return Ok((display, stored));
        }
        if self.in_layer
            && !self.opts.whiteouts
            && !path.is_root()
            && path.file_name().starts_with(whiteout::PREFIX)
        {
            return Err(unsafe_(
                "a file whose name starts with .wh. would be a whiteout in the layer (deleting files of lower layers)",
            ));
        }

        let link_buf;
        let link_placed;
        let mut empty = io::empty();
        let data: &mut dyn Read = match kind {
            T::Directory => {
                if self.kinds.get(&key) == Some(&Kind::NonDir) {
                    return Err(unsafe_(
                        "directory entry at a path an earlier entry made a non-directory",
                    ));
                }
                &mut empty
            }
            T::Regular => {
                let size = entry.size();
                self.check_size(size, &display)?;
                spec.size = size;
                &mut *entry
            }
            T::Symlink => {
                link_buf = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                if link_buf.is_empty()
                    || link_buf.len() > limits.max_path_len
                    || link_buf.contains(&0)
                {
                    return Err(unsafe_(
                        "symlink target is empty, too long or has a NUL byte",
                    ));
                }
                spec.link = Some(&link_buf);
                spec.mode = 0o777;
                &mut empty
            }
            T::Link => {
                let raw = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| unsafe_("hard link without a target"))?;
                let mut target = EntryPath::parse(&raw, limits.max_path_len)
                    .map_err(|e| unsafe_(e.reason(true)))?;
                self.top.apply(&mut target, true).map_err(unsafe_)?;
                link_buf = target.to_bytes();
                if target.is_root() {
                    return Err(unsafe_("hard link to the root directory"));
                }
                match self.kinds.get(&link_buf) {
                    Some(Kind::NonDir) => {}
                    Some(Kind::Dir) => return Err(unsafe_("hard link to a directory")),
                    None => {
                        return Err(unsafe_(
                            "hard link target is not an earlier entry of the archive",
                        ))
                    }
                }
                if self.parent_problem(&link_buf).is_some() {
                    return Err(unsafe_(
                        "hard link target lies beneath a path an earlier entry made a non-directory",
                    ));
                }
                // An earlier entry was placed there, so this fits.
                link_placed = self.placed(&link_buf).ok_or_else(|| {
                    unsafe_("hard link target, placed beneath the destination directory, is longer than the limit")
                })?;
                spec.link = Some(&link_placed);
                &mut empty
            }
            T::Fifo => &mut empty,
            T::Char | T::Block => match self.opts.devices {
                DevicePolicy::Skip => {
                    self.stats.skipped_devices += 1;
                    return Ok((display, stored));
                }
                DevicePolicy::Refuse => return Err(Error::DeviceRefused { entry: display }),
                DevicePolicy::Create => {
                    let h = entry.header();
                    spec.device = Some((
                        h.device_major().ok().flatten().unwrap_or(0),
                        h.device_minor().ok().flatten().unwrap_or(0),
                    ));
                    &mut empty
                }
            },
            _ => unreachable!("entry types are mapped above"),
        };
        if kind != T::Symlink && kind != T::Link {
            self.stats.setid_dropped += u64::from(dropped);
        }
        let kept: Vec<(Vec<u8>, Vec<u8>)> = meta
            .xattrs
            .iter()
            .filter(|(k, _)| {
                // PAX keys are text: a name that is not UTF-8 or holds
                // `=` cannot be written back faithfully.
                entry::xattr_allowed(k, self.opts)
                    && std::str::from_utf8(k).is_ok()
                    && !k.contains(&b'=')
            })
            .cloned()
            .collect();
        self.stats.xattrs_dropped += (meta.xattrs.len() - kept.len()) as u64;
        if kind != T::Link {
            spec.xattrs = &kept;
        }
        self.write(&spec, data, &display)?;
        self.stats.bytes += spec.size;
        if !path.is_root() {
            let k = if kind == T::Directory {
                Kind::Dir
            } else {
                Kind::NonDir
            };
            self.kinds.insert(key.clone(), k);
        }
        Ok((display, stored))
    }

    /// Whether a proper prefix of `key` was made a non-directory.
    fn parent_problem(&self, key: &[u8]) -> Option<&'static str> {
        for (i, b) in key.iter().enumerate() {
            if *b == b'/' && self.kinds.get(&key[..i]) == Some(&Kind::NonDir) {
                return Some(
                    "path goes through an earlier entry that is a symlink or a file, not a directory",
                );
            }
        }
        None
    }

    fn check_size(&self, size: u64, display: &str) -> Result<()> {
        let limits = &self.opts.limits;
        if size > limits.max_entry_size {
            return Err(Error::EntryTooLarge {
                entry: display.to_string(),
                size,
                limit: limits.max_entry_size,
            });
        }
        if self.stats.bytes.saturating_add(size) > limits.max_total_size {
            return Err(Error::TotalTooLarge {
                entry: display.to_string(),
                limit: limits.max_total_size,
            });
        }
        Ok(())
    }

    /// Writes an entry; a short read of its data is the input's fault.
    fn write(&mut self, spec: &Spec<'_>, data: &mut dyn Read, display: &str) -> Result<()> {
        let mut src = ReadErrors {
            inner: data,
            err: None,
        };
        match self.out.append(spec, &mut src) {
            Ok(()) => Ok(()),
            Err(_) if src.err.is_some() => Err(Error::Archive {
                after: Some(display.to_string()),
                source: src.err.take().expect("checked"),
            }),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Archive {
                after: Some(display.to_string()),
                source: e,
            }),
            Err(e) => Err(io_err(display, "writing the output archive")(e)),
        }
    }
}

/// Remembers a read error, to tell input errors from output errors.
struct ReadErrors<'a> {
    inner: &'a mut dyn Read,
    err: Option<io::Error>,
}

impl Read for ReadErrors<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.err = Some(e);
            copy
        })
    }
}
