//! Flattening images into read-only ext4 root disks, and scratch disks.
//!
//! An image's layers are applied in order into a temp directory (with the
//! hardened unpacker of [`crate::layer`]), then `mkfs.ext4 -d` builds the
//! filesystem from it without mounting anything. That directory is on the
//! tmpfs at `/dev/shm` when the image fits there ([`Staging`]): it is
//! scratch, and creating its inodes on the store's filesystem was most of
//! the conversion's time. The result is published
//! atomically into `disks/<key>.ext4`, where `key` hashes the ordered
//! diff_ids and [`CONVERTER_VERSION`]: images sharing their layers share
//! a disk, and a second request is a `stat` (well under 10 ms). Disks are
//! never modified after publication (mode 0444); every sandbox of the
//! image attaches the same file read-only, with its writes going to its own
//! scratch disk through overlayfs in the guest.
//!
//! The disk has no journal (it is never written) and no reserved blocks.
//! Its size is estimated from the unpacked tree (data blocks, directory
//! blocks, inode tables) plus headroom; if mkfs still runs out of space or
//! inodes, it is retried with a larger size.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::digest::{Digest, Hasher};
use crate::fsutil::{self, FileLock};
use crate::layer::{self, LayerError, UnpackOptions, UnpackStats};
use crate::manifest;
use crate::store::{ImageRecord, Store, StoreError};

/// Version of the conversion: bump when the disk format or the unpacker's
/// output changes, so that cached disks are rebuilt.
pub const CONVERTER_VERSION: &str = "mvm-rootdisk-v1";
/// File name suffix of cached disks.
pub const DISK_SUFFIX: &str = ".ext4";
/// Version of the scratch disk template format.
pub const SCRATCH_VERSION: &str = "v1";
const BLOCK: u64 = 4096;
const INODE_SIZE: u64 = 256;
const MKFS: &str = "mkfs.ext4";

/// Errors from building disks.
#[derive(Debug, thiserror::Error)]
pub enum RootDiskError {
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A layer could not be applied.
    #[error("layer {index} ({digest}) of image {image}: {source}")]
    Layer {
        /// 1-based layer number.
        index: usize,
        /// Layer blob digest.
        digest: Digest,
        /// Image ID.
        image: Digest,
        /// The problem (boxed: it is large and errors travel far).
        source: Box<LayerError>,
    },
    /// mkfs.ext4 is not installed.
    #[error("{MKFS} not found: install e2fsprogs (apt-get install e2fsprogs)")]
    MkfsMissing,
    /// mkfs.ext4 failed.
    #[error("{MKFS} failed ({status}) building {}: {stderr}", path.display())]
    Mkfs {
        /// The output file.
        path: PathBuf,
        /// Exit status.
        status: String,
        /// Its error output.
        stderr: String,
    },
    /// A filesystem operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Out of space.
    #[error("no space left on device while {op} {}: free disk space or prune images, then retry", path.display())]
    NoSpace {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
    },
    /// A zero or absurd scratch size.
    #[error("invalid scratch disk size {0} bytes: give at least 16 MiB and at most 16 TiB")]
    BadScratchSize(u64),
}

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> RootDiskError {
    let path = path.into();
    move |source| {
        if matches!(
            source.raw_os_error(),
            Some(libc::ENOSPC) | Some(libc::EDQUOT)
        ) {
            RootDiskError::NoSpace { op, path }
        } else {
            RootDiskError::Io { op, path, source }
        }
    }
}

type Result<T, E = RootDiskError> = std::result::Result<T, E>;

/// The cache key of an image's root disk: sha256 over the converter
/// version and the ordered layer diff_ids. Two images with the same layers
/// (e.g. re-tagged, or differing only in config) share one disk.
pub fn disk_key(diff_ids: &[Digest]) -> String {
    let mut h = Hasher::new();
    h.update(CONVERTER_VERSION.as_bytes());
    h.update(b"\n");
    for d in diff_ids {
        h.update(d.to_string().as_bytes());
        h.update(b"\n");
    }
    h.finish().hex()
}

/// Options for building a root disk.
#[derive(Debug, Clone, Copy)]
pub struct RootDiskOptions {
    /// Unpacker limits and policies.
    pub unpack: UnpackOptions,
    /// Free space left in the filesystem beyond the estimate, in percent
    /// of the content (some room keeps ext4's allocator out of trouble).
    pub headroom_percent: u64,
    /// Where the unpacked tree that mkfs reads is built.
    pub staging: Staging,
}

impl Default for RootDiskOptions {
    fn default() -> Self {
        RootDiskOptions {
            unpack: UnpackOptions::default(),
            headroom_percent: 10,
            staging: Staging::default(),
        }
    }
}

/// Where the unpacked tree of a conversion is built. The tree is scratch:
/// it only exists for mkfs to read and is deleted right after, so nothing
/// in it needs to reach a disk. Creating its thousands of inodes on the
/// store's journaled filesystem was measured to be most of a conversion
/// (docs/benchmarks.md); on a tmpfs it costs next to nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Staging {
    /// In a private directory on the tmpfs at [`TMPFS_STAGING`] when the
    /// image fits comfortably (its estimated unpacked size is below the
    /// tmpfs's free space and half the memory available), otherwise as
    /// [`Staging::Store`]. If the tmpfs fills up all the same, the
    /// conversion starts again in the store. (Kernels before 6.6 refuse
    /// `user.*` xattrs on a tmpfs: such xattrs of a layer are then dropped
    /// and counted, as on any filesystem that refuses them.)
    #[default]
    Auto,
    /// In the store's temp directory (the store's filesystem).
    Store,
}

/// The tmpfs [`Staging::Auto`] uses.
pub const TMPFS_STAGING: &str = "/dev/shm";
/// Name prefix of staging directories on the tmpfs.
pub(crate) const STAGING_PREFIX: &str = "mvm-rootfs-";
/// Suffix of the marker `<store>/tmp/<lease id>.staging`, which names a
/// conversion's staging directory on the tmpfs while it exists, so that GC
/// removes the directory if the converting process died.
pub(crate) const STAGING_MARKER: &str = "staging";

/// A root disk ready to attach read-only.
#[derive(Debug, Clone)]
pub struct RootDisk {
    /// The ext4 file (never modified after publication).
    pub path: PathBuf,
    /// Its cache key.
    pub key: String,
    /// True if it was already built.
    pub cached: bool,
    /// Its size in bytes.
    pub size: u64,
    /// How the build went (None when cached).
    pub build: Option<BuildStats>,
}

/// Timings and counts of one conversion.
#[derive(Debug, Clone, Copy)]
pub struct BuildStats {
    /// Time spent applying layers.
    pub unpack: Duration,
    /// Time spent in mkfs (all attempts, including sizing the tree).
    pub mkfs: Duration,
    /// Time spent making the disk durable and visible (fsync, rename,
    /// fsync of the directory).
    pub publish: Duration,
    /// Unpacker totals.
    pub stats: UnpackStats,
    /// Inodes in the tree.
    pub inodes: u64,
    /// mkfs attempts (1 unless the estimate was low).
    pub attempts: u32,
    /// Whether the tree was built on the tmpfs ([`Staging::Auto`]).
    pub on_tmpfs: bool,
}

/// Size estimate of a directory tree for ext4.
#[derive(Debug, Clone, Copy, Default)]
struct TreeSize {
    inodes: u64,
    blocks: u64,
}

fn measure(root: &Path) -> io::Result<TreeSize> {
    let mut t = TreeSize::default();
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        t.inodes += 1;
        let mut name_bytes = 0u64;
        for e in fs::read_dir(&dir)? {
            let e = e?;
            name_bytes += e.file_name().len() as u64 + 12;
            let md = e.metadata()?;
            if md.is_dir() {
                stack.push(e.path());
                continue;
            }
            if md.nlink() > 1 && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            t.inodes += 1;
            if md.is_file() {
                let blocks = md.len().div_ceil(BLOCK);
                // Extent tree blocks for very large, fragmented files.
                t.blocks += blocks + blocks / 2048;
            } else if md.file_type().is_symlink() && md.len() >= 60 {
                t.blocks += 1;
            }
        }
        t.blocks += name_bytes.div_ceil(BLOCK).max(1);
    }
    Ok(t)
}

/// Runs mkfs.ext4 over `src` into `out`, growing the size on failure.
fn mkfs_from_dir(
    src: &Path,
    out: &Path,
    label: &str,
    uuid: &str,
    headroom: u64,
) -> Result<(u32, TreeSize)> {
    let t = measure(src).map_err(io_err("measuring", src))?;
    let mut inodes = t.inodes + t.inodes / 10 + 64;
    let inode_blocks = (inodes * INODE_SIZE).div_ceil(BLOCK);
    let data = t.blocks + inode_blocks;
    // Group descriptors, bitmaps, superblock backups: ~1/32 + a floor.
    let mut blocks = data + data * headroom / 100 + data / 32 + 1024;
    for attempt in 1..=4u32 {
        let _ = fs::remove_file(out);
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(out)
            .map_err(io_err("creating", out))?;
        f.set_len(blocks * BLOCK).map_err(io_err("sizing", out))?;
        drop(f);
        let output = Command::new(MKFS)
            .args([
                "-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256", "-m", "0",
            ])
            .args(["-N", &inodes.to_string()])
            .args(["-O", "^has_journal"])
            .args(["-E", "nodiscard,lazy_itable_init=1"])
            .args(["-L", label, "-U", uuid])
            .arg("-d")
            .arg(src)
            .arg(out)
            .env("MKE2FS_CONFIG", "/etc/mke2fs.conf")
            .output()
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    RootDiskError::MkfsMissing
                } else {
                    RootDiskError::Io {
                        op: "running",
                        path: PathBuf::from(MKFS),
                        source: e,
                    }
                }
            })?;
        if output.status.success() {
            return Ok((attempt, t));
        }
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        let out_of_room = [
            "Could not allocate",
            "No space left",
            "inode",
            "too small",
            "no free space",
        ]
        .iter()
        .any(|s| stderr.contains(s));
        if !out_of_room || attempt == 4 {
            let _ = fs::remove_file(out);
            // A full host filesystem surfaces through mkfs's write errors.
            if stderr.contains("No space left") && fs_is_full(out) {
                return Err(RootDiskError::NoSpace {
                    op: "building root disk",
                    path: out.to_path_buf(),
                });
            }
            return Err(RootDiskError::Mkfs {
                path: out.to_path_buf(),
                status: output.status.to_string(),
                stderr,
            });
        }
        tracing::info!(
            attempt,
            blocks,
            inodes,
            "mkfs ran out of room, retrying larger"
        );
        blocks += blocks / 2;
        inodes += inodes / 2;
    }
    unreachable!("the loop returns on its last attempt")
}

/// True if the filesystem holding `path` has (almost) no free blocks.
fn fs_is_full(path: &Path) -> bool {
    let dir = path.parent().unwrap_or(Path::new("/"));
    rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail * s.f_frsize < 1 << 20)
        .unwrap_or(false)
}

/// A UUID string derived from `key` (stable per disk content).
fn uuid_from(key: &str) -> String {
    let k = &key[..32];
    format!(
        "{}-{}-{}-{}-{}",
        &k[..8],
        &k[8..12],
        &k[12..16],
        &k[16..20],
        &k[20..32]
    )
}

/// A staging directory on the tmpfs: `<TMPFS_STAGING>/mvm-rootfs-<id>/`
/// (0700) with the tree in `rootfs/`, named by a marker in the store's
/// temp directory while it exists. Removed with its marker when dropped.
struct StagingDir {
    dir: PathBuf,
    marker: PathBuf,
}

impl StagingDir {
    fn tree(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Deletes the directory on a thread of its own (synchronously if no
    /// thread can be started).
    fn remove_in_background(self) {
        let spawned = std::thread::Builder::new()
            .name("mvm-rootfs-cleanup".into())
            .spawn(move || drop(self));
        if let Err(e) = spawned {
            tracing::debug!("cleanup thread not started: {e}");
        }
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        let _ = crate::store::remove_tree(&self.dir);
        let _ = fs::remove_file(&self.marker);
    }
}

/// Whether an unpack failed for want of space.
fn is_no_space(r: &Result<()>) -> bool {
    matches!(r, Err(RootDiskError::Layer { source, .. }) if matches!(**source, LayerError::NoSpace { .. }))
}

/// `MemAvailable` of /proc/meminfo, in bytes.
fn mem_available() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The uncompressed size of a layer blob, roughly: a gzip member's own
/// trailer (the size modulo 4 GiB, so never less than the blob), five
/// times a zstd blob, an uncompressed blob's size.
fn unpacked_size_of(mut f: File) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let size = f.metadata()?.len();
    let mut head = [0u8; 4];
    if size < 24 || f.read_exact(&mut head).is_err() {
        return Ok(size);
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        let mut tail = [0u8; 4];
        f.seek(SeekFrom::End(-4))?;
        f.read_exact(&mut tail)?;
        Ok(u64::from(u32::from_le_bytes(tail)).max(size))
    } else if head == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(size.saturating_mul(5))
    } else {
        Ok(size)
    }
}

impl Store {
    /// A staging directory on the tmpfs for `rec`'s tree, if there is a
    /// tmpfs at [`TMPFS_STAGING`] with room for it and the memory to spare;
    /// `None` means: build in the store.
    fn tmpfs_staging(&self, rec: &ImageRecord, lease: &crate::store::Lease) -> Option<StagingDir> {
        let base = Path::new(TMPFS_STAGING);
        let sfs = rustix::fs::statfs(base).ok()?;
        if sfs.f_type as u64 != libc::TMPFS_MAGIC as u64 {
            return None;
        }
        let free = (sfs.f_bavail as u64).saturating_mul(sfs.f_bsize as u64);
        let mut need = 0u64;
        for l in &rec.manifest.layers {
            let f = self.open_blob(&l.digest).ok()?;
            need = need.saturating_add(unpacked_size_of(f).ok()?);
        }
        // Small files take a page each on a tmpfs, not a tar block.
        need = need.saturating_add(need / 4).saturating_add(32 << 20);
        let mem = mem_available().unwrap_or(0);
        if need > free || need > mem / 2 {
            tracing::debug!(
                need,
                free,
                mem,
                "unpacking in the store: the tmpfs lacks room"
            );
            return None;
        }
        let dir = base.join(format!("{STAGING_PREFIX}{}", fsutil::random_id()));
        let marker = self
            .tmp_dir()
            .join(format!("{}.{STAGING_MARKER}", lease.id()));
        // The marker first: whatever happens next, GC can find the directory.
        if let Err(e) = fs::write(&marker, dir.as_os_str().as_encoded_bytes()) {
            tracing::debug!("unpacking in the store: writing {}: {e}", marker.display());
            return None;
        }
        let staged = StagingDir { dir, marker };
        match fs::DirBuilder::new().mode(0o700).create(&staged.dir) {
            Ok(()) => Some(staged),
            Err(e) => {
                tracing::debug!(
                    "unpacking in the store: creating {}: {e}",
                    staged.dir.display()
                );
                None
            }
        }
    }

    /// Applies `rec`'s layers in order onto `tree` (created here).
    fn unpack_layers(
        &self,
        rec: &ImageRecord,
        tree: &Path,
        opts: &RootDiskOptions,
        stats: &mut UnpackStats,
    ) -> Result<()> {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(tree)
            .or_else(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io_err("creating", tree))?;
        for (i, (l, diff_id)) in rec.manifest.layers.iter().zip(&rec.diff_ids).enumerate() {
            let blob = self.open_blob(&l.digest)?;
            let declared = manifest::layer_compression(&l.media_type).ok();
            layer::apply_layer(tree, blob, declared, Some(diff_id), &opts.unpack, stats).map_err(
                |source| RootDiskError::Layer {
                    index: i + 1,
                    digest: l.digest,
                    image: rec.id,
                    source: Box::new(source),
                },
            )?;
        }
        Ok(())
    }

    /// Deletes an unpacked tree in the store: deleting thousands of files
    /// takes longer than the whole mkfs on a busy disk, so the tree is
    /// moved aside (one rename) and deleted in the background. If this
    /// process exits first, the next prune removes the orphan (it belongs
    /// to no live lease).
    fn discard_tree(&self, tree: &Path) {
        let trash = self
            .tmp_dir()
            .join(format!("trash-{}", fsutil::random_id()));
        match fs::rename(tree, &trash) {
            Ok(()) => {
                let spawned = std::thread::Builder::new()
                    .name("mvm-rootfs-cleanup".into())
                    .spawn(move || {
                        let _ = fs::remove_dir_all(&trash);
                    });
                if let Err(e) = spawned {
                    tracing::debug!("cleanup thread not started ({e}); prune will remove the tree");
                }
            }
            Err(_) => {
                let _ = fs::remove_dir_all(tree);
            }
        }
    }
}

impl Store {
    /// Where the root disk of `rec` lives (whether or not it is built).
    pub fn root_disk_path(&self, rec: &ImageRecord) -> PathBuf {
        self.disks_dir()
            .join(format!("{}{DISK_SUFFIX}", disk_key(&rec.diff_ids)))
    }

    /// The image's root disk, building it on first use. Safe to call
    /// concurrently from several threads or processes: one builds, the
    /// others wait for it and reuse the result.
    pub fn root_disk(&self, rec: &ImageRecord, opts: &RootDiskOptions) -> Result<RootDisk> {
        let key = disk_key(&rec.diff_ids);
        let path = self.disks_dir().join(format!("{key}{DISK_SUFFIX}"));
        if let Ok(md) = fs::metadata(&path) {
            return Ok(RootDisk {
                path,
                key,
                cached: true,
                size: md.len(),
                build: None,
            });
        }
        let lease = self.lease()?;
        lease.pin_disk(&key)?;
        for l in &rec.manifest.layers {
            lease.pin_blob(&l.digest)?;
        }
        let lock_path = self.disks_dir().join(format!("{key}.lock"));
        let _lock = FileLock::acquire(&lock_path, true).map_err(io_err("locking", &lock_path))?;
        if let Ok(md) = fs::metadata(&path) {
            return Ok(RootDisk {
                path,
                key,
                cached: true,
                size: md.len(),
                build: None,
            });
        }
        let t0 = Instant::now();
        let mut staged = match opts.staging {
            Staging::Auto => self.tmpfs_staging(rec, &lease),
            Staging::Store => None,
        };
        let store_tree = lease.tmp_dir().join("rootfs");
        let mut stats = UnpackStats::default();
        let mut unpacked = match &staged {
            Some(s) => self.unpack_layers(rec, &s.tree(), opts, &mut stats),
            None => self.unpack_layers(rec, &store_tree, opts, &mut stats),
        };
        if staged.is_some() && is_no_space(&unpacked) {
            tracing::info!(
                image = %rec.id,
                "the tmpfs filled up while unpacking; converting in the store instead"
            );
            staged = None;
            stats = UnpackStats::default();
            unpacked = self.unpack_layers(rec, &store_tree, opts, &mut stats);
        }
        unpacked?;
        let tree = match &staged {
            Some(s) => s.tree(),
            None => store_tree,
        };
        let unpack = t0.elapsed();
        let t1 = Instant::now();
        let tmp_disk = lease.tmp_dir().join("disk.ext4");
        let (attempts, t) = mkfs_from_dir(
            &tree,
            &tmp_disk,
            "mvm-root",
            &uuid_from(&key),
            opts.headroom_percent,
        )?;
        let mkfs = t1.elapsed();
        let t2 = Instant::now();
        let f = File::open(&tmp_disk).map_err(io_err("opening", &tmp_disk))?;
        f.sync_all().map_err(io_err("syncing", &tmp_disk))?;
        let size = f.metadata().map_err(io_err("inspecting", &tmp_disk))?.len();
        drop(f);
        // Read-only, and the owner's alone like the rest of the store.
        fs::set_permissions(&tmp_disk, fs::Permissions::from_mode(0o400))
            .map_err(io_err("setting mode of", &tmp_disk))?;
        fs::rename(&tmp_disk, &path).map_err(io_err("publishing", &path))?;
        fsutil::sync_dir(&self.disks_dir()).map_err(io_err("syncing", self.disks_dir()))?;
        let publish = t2.elapsed();
        let on_tmpfs = staged.is_some();
        match staged {
            // On the tmpfs: gone in a moment, off the caller's time.
            Some(s) => s.remove_in_background(),
            None => self.discard_tree(&tree),
        }
        Ok(RootDisk {
            path,
            key,
            cached: false,
            size,
            build: Some(BuildStats {
                unpack,
                mkfs,
                publish,
                stats,
                inodes: t.inodes,
                attempts,
                on_tmpfs,
            }),
        })
    }

    /// Resolves `spec` and returns its root disk (see [`Store::root_disk`]).
    pub fn root_disk_for(
        &self,
        spec: &str,
        opts: &RootDiskOptions,
    ) -> Result<(ImageRecord, RootDisk)> {
        let rec = self.resolve(spec)?;
        let disk = self.root_disk(&rec, opts)?;
        Ok((rec, disk))
    }

    /// Creates a blank, writable ext4 scratch disk of `size` bytes at
    /// `dest` (which must not exist). The guest makes its `upper`/`work`
    /// directories on it. Built by sparse-copying a cached, pre-formatted
    /// template of that size (measured faster than running mkfs each time;
    /// see the benchmark), made once under a lock in `<store>/scratch/`.
    pub fn create_scratch_disk(&self, dest: &Path, size: u64) -> Result<()> {
        if !(16 << 20..=16 << 40).contains(&size) {
            return Err(RootDiskError::BadScratchSize(size));
        }
        let size = size.div_ceil(BLOCK) * BLOCK;
        let dir = self.root().join("scratch");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("creating", &dir))?;
        let tmpl = dir.join(format!("{SCRATCH_VERSION}-{size}.ext4"));
        if !tmpl.exists() {
            let lock_path = dir.join(format!("{SCRATCH_VERSION}-{size}.lock"));
            let _lock =
                FileLock::acquire(&lock_path, true).map_err(io_err("locking", &lock_path))?;
            if !tmpl.exists() {
                let tmp = dir.join(format!(".{}.tmp", fsutil::random_id()));
                let r = mkfs_scratch(&tmp, size).and_then(|()| {
                    fs::rename(&tmp, &tmpl).map_err(io_err("publishing", &tmpl))?;
                    fsutil::sync_dir(&dir).map_err(io_err("syncing", &dir))
                });
                if r.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                r?;
            }
        }
        let r = sparse_copy(&tmpl, dest);
        if r.is_err() {
            let _ = fs::remove_file(dest);
        }
        r
    }
}

/// Formats a fresh sparse file as a writable ext4 scratch disk (with a
/// journal: sandboxes write to it and may be killed at any time).
pub fn mkfs_scratch(dest: &Path, size: u64) -> Result<()> {
    mkfs_writable(dest, size, "mvm-scratch")
}

/// Formats a fresh sparse file `dest` of `size` bytes as a writable ext4
/// disk labelled `label` (at most 16 bytes): journalled, no reserved
/// blocks, lazily initialised (a multi-GiB disk costs a few MiB on the
/// host until written). Used for scratch disks and block volumes; the
/// host only ever makes such a disk, it never reads one back.
pub fn mkfs_writable(dest: &Path, size: u64, label: &str) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io_err("creating", dest))?;
    f.set_len(size).map_err(io_err("sizing", dest))?;
    drop(f);
    let output = Command::new(MKFS)
        .args(["-q", "-F", "-t", "ext4", "-m", "0", "-L", label])
        .args(["-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1"])
        .arg(dest)
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                RootDiskError::MkfsMissing
            } else {
                RootDiskError::Io {
                    op: "running",
                    path: PathBuf::from(MKFS),
                    source: e,
                }
            }
        })?;
    if !output.status.success() {
        return Err(RootDiskError::Mkfs {
            path: dest.to_path_buf(),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Copies `src` to a new file `dest`, preserving holes (only the data
/// extents are copied: a few MiB for a formatted multi-GiB template).
fn sparse_copy(src: &Path, dest: &Path) -> Result<()> {
    use rustix::fs::{copy_file_range, seek, SeekFrom};
    let inp = File::open(src).map_err(io_err("opening", src))?;
    let len = inp.metadata().map_err(io_err("inspecting", src))?.len();
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io_err("creating", dest))?;
    out.set_len(len).map_err(io_err("sizing", dest))?;
    let mut pos = 0u64;
    while pos < len {
        let data = match seek(&inp, SeekFrom::Data(pos)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(io_err("seeking in", src)(e.into())),
        };
        let hole = seek(&inp, SeekFrom::Hole(data))
            .map_err(|e| io_err("seeking in", src)(e.into()))?
            .min(len);
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = (hole - off_in).min(1 << 30) as usize;
            let n = copy_file_range(&inp, Some(&mut off_in), &out, Some(&mut off_out), want)
                .map_err(|e| io_err("copying to", dest)(e.into()))?;
            if n == 0 {
                return Err(io_err("copying to", dest)(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "template shrank while copying",
                )));
            }
        }
        pos = hole;
    }
    out.sync_all().map_err(io_err("syncing", dest))?;
    Ok(())
}
