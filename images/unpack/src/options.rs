//! What an unpack or a re-serialisation may do: limits and policies.
//!
//! Three presets cover mvm's callers: [`Options::layer`] for OCI image
//! layers (whiteouts, setuid kept, owners kept when root, later entries
//! replace what is there), [`Options::volume`] for a volume backup
//! restored into a new, private directory, and [`Options::copy`] for
//! everything else that arrives as a plain tar (`mvctl cp` out of a
//! sandbox, build contexts): no whiteouts, no device nodes, setuid/setgid and
//! file capabilities dropped, the caller owns the files, and the
//! destination's existing content is merged with, never replaced by a
//! different kind of file. The default is the strict one.

/// Size and count limits. Every limit is checked before the data that
/// would cross it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file, in bytes.
    pub max_entry_size: u64,
    /// Largest total of file data, in bytes. Counted in [`Stats::bytes`],
    /// so a caller unpacking several archives (the layers of one image)
    /// with one `Stats` bounds them together.
    pub max_total_size: u64,
    /// Most entries (counted in [`Stats::entries`], across calls as above).
    pub max_entries: u64,
    /// Longest entry name, hard link target or symlink target, in bytes.
    pub max_path_len: usize,
    /// Most bytes of metadata records (GNU long names, PAX headers) in
    /// front of one entry. The `tar` crate holds them in memory, so a
    /// hostile archive could otherwise make it allocate without bound.
    pub max_header_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entry_size: 16 << 30,
            max_total_size: 64 << 30,
            max_entries: 4_000_000,
            max_path_len: 4096,
            max_header_size: 1 << 20,
        }
    }
}

/// What to do with character and block device entries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Leave them out and count them in [`Stats::skipped_devices`]
    /// (default).
    #[default]
    Skip,
    /// Create them with `mknod` (unpack) or keep them (re-serialise). Only
    /// for image layers; never for files that land in a user's directory.
    Create,
    /// Fail, naming the entry.
    Refuse,
}

/// Which extended attributes from PAX `SCHILY.xattr.*` records are kept.
/// `trusted.overlay.*` is always dropped (it would steer the guest's
/// overlayfs), and `security.capability` (file capabilities, as
/// powerful as setuid) only with [`Options::keep_setid`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XattrPolicy {
    /// None.
    None,
    /// `user.*` only (default): harmless to the host.
    #[default]
    User,
    /// `user.*`, `security.*`, `trusted.*` and POSIX ACLs: what an image
    /// layer may carry.
    All,
}

/// How entries meet what already exists at their path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Existing {
    /// Image layer semantics: an entry replaces whatever is at its path (a
    /// directory only by a non-directory; directories merge), existing
    /// directories take the entry's metadata, and hard links may name any
    /// file already in the tree (a lower layer's).
    Replace,
    /// `docker cp` semantics (default) for extracting into a directory
    /// that holds someone's files: a directory is never replaced by a
    /// non-directory nor the other way round (the entry is refused),
    /// directories that existed before keep their owner, mode and times
    /// (the destination root included), and hard links may only name
    /// files this archive created.
    #[default]
    Merge,
}

/// Unpack and re-serialisation options; see the presets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Size and count limits.
    pub limits: Limits,
    /// OCI whiteouts: `.wh.NAME` deletes NAME from lower layers and
    /// `.wh..wh..opq` makes its directory opaque. Off, such names are
    /// ordinary file names.
    pub whiteouts: bool,
    /// Device node policy.
    pub devices: DevicePolicy,
    /// Keep setuid and setgid bits and `security.capability` xattrs.
    /// Dropped ones are counted in [`Stats::setid_dropped`].
    pub keep_setid: bool,
    /// Give files the archive's uid/gid. Only honoured when the process
    /// runs as root (anyone else cannot chown); otherwise, and when false,
    /// files belong to the caller. Re-serialisation always copies the
    /// numeric owners (an archive's owners are data, not an action).
    pub preserve_ownership: bool,
    /// Extended attributes.
    pub xattrs: XattrPolicy,
    /// How entries meet existing files.
    pub existing: Existing,
    /// Rename the archive's top-level name: the first entry's first
    /// component becomes this name, every later entry must begin with the
    /// same component and is renamed alike, hard link targets included
    /// (how `docker cp` extracts `NAME:/etc` to a new path `dest`). Must
    /// be a single component: not empty, `.`, `..`, and no `/` or NUL.
    pub rename_top: Option<Vec<u8>>,
}

impl Options {
    /// OCI image layers: whiteouts, setuid/setgid kept, devices skipped,
    /// owners kept when running as root, all xattr namespaces but
    /// `trusted.overlay.*`, later entries replace earlier files.
    pub fn layer() -> Options {
        Options {
            limits: Limits::default(),
            whiteouts: true,
            devices: DevicePolicy::Skip,
            keep_setid: true,
            preserve_ownership: rustix::process::geteuid().is_root(),
            xattrs: XattrPolicy::All,
            existing: Existing::Replace,
            rename_top: None,
        }
    }

    /// Plain archives from someone untrusted, into a directory that may
    /// hold other files: no whiteouts, devices skipped, setuid/setgid and
    /// capabilities dropped, files owned by the caller, `user.*` xattrs
    /// only, merged with `docker cp` semantics.
    pub fn copy() -> Options {
        Options {
            limits: Limits::default(),
            whiteouts: false,
            devices: DevicePolicy::Skip,
            keep_setid: false,
            preserve_ownership: false,
            xattrs: XattrPolicy::User,
            existing: Existing::Merge,
            rename_top: None,
        }
    }
}

impl Options {
    /// A volume backup (`mvctl volume import`) restored into a new, empty
    /// directory that only the caller can reach (a volume's `_data` under
    /// a 0700 parent): what [`crate::pack`] wrote comes back as it was.
    /// Owners kept when running as root, setuid/setgid kept (a volume is
    /// the guests' data, and its parent keeps host users from running
    /// them), the root directory and every directory take the archive's
    /// metadata ([`Existing::Replace`]: the directory starts empty, so
    /// nothing of anyone else's is replaced and hard links can only name
    /// this archive's files), no whiteouts, device nodes skipped, `user.*`
    /// xattrs only. Every path rule and limit of the unpacker applies.
    pub fn volume() -> Options {
        Options {
            limits: Limits::default(),
            whiteouts: false,
            devices: DevicePolicy::Skip,
            keep_setid: true,
            preserve_ownership: rustix::process::geteuid().is_root(),
            xattrs: XattrPolicy::User,
            existing: Existing::Replace,
            rename_top: None,
        }
    }
}

impl Default for Options {
    /// [`Options::copy`], the strict preset.
    fn default() -> Self {
        Options::copy()
    }
}

/// Running totals. Pass the same value to several calls to bound them
/// together (the layers of one image).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Entries read (metadata-only entries such as PAX global headers
    /// included).
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
    /// Device nodes left out by [`DevicePolicy::Skip`].
    pub skipped_devices: u64,
    /// Whiteouts and opaque markers applied (or kept, re-serialising).
    pub whiteouts: u64,
    /// Entries whose setuid/setgid bits were cleared.
    pub setid_dropped: u64,
    /// Extended attributes left out, by policy or because the filesystem
    /// refused them (unsupported, or `user.*` on a symlink).
    pub xattrs_dropped: u64,
}
