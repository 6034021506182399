//! Every fuzz target's body over what it has been fed before, in every
//! `make test`: the seeds `make_seeds.py` writes, the corpus `make fuzz`
//! keeps in `${MVM_CACHE:-/var/cache/mvm}/fuzz/corpus/<target>` (when this
//! machine has one), and pseudo-random inputs and mutations of the seeds
//! from a fixed seed (so a failure reproduces). This is regression
//! checking, not fuzzing: without coverage feedback it finds only shallow
//! bugs; `make fuzz` explores. An input that panics is saved where
//! cargo-fuzz reproduces it (`fuzz/libfuzzer/artifacts/<target>/`) and the
//! test names the file.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;
use std::{env, fs};

use mvm_fuzz::targets::{Target, ALL};

/// Pseudo-random inputs per target, and mutations of its seeds (5000 in
/// all: about 5 s for the twelve targets in a dev build).
const RANDOM_INPUTS: usize = 2000;
const MUTATIONS: usize = 3000;
/// Stored corpora can hold thousands of inputs; the newest files (the
/// most recent finds) are replayed first, up to this many.
const CORPUS_CAP: usize = 3000;

/// The seeds directory, written once for all tests by `make_seeds.py`.
fn seeds() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("make_seeds.py");
        let out = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running python3 {}: {e} (make deps installs it)",
                    script.display()
                )
            });
        assert!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        dir
    })
    .path()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<(std::time::SystemTime, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.path())
        })
        .collect();
    // Newest first, then by name, so the choice is stable.
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    v.into_iter().map(|(_, p)| p).collect()
}

/// xorshift64*: a fixed sequence per target, no dependency.
struct Rand(u64);

impl Rand {
    fn new(name: &str) -> Self {
        let mut h = DefaultHasher::new();
        name.hash(&mut h);
        Rand(h.finish() | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One mutation as libFuzzer might make it: flipped bytes, a cut, an
/// insertion, or a splice of two seeds.
fn mutate(r: &mut Rand, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut v = seeds[r.below(seeds.len())].clone();
    for _ in 0..1 + r.below(4) {
        match r.below(4) {
            0 if !v.is_empty() => {
                let i = r.below(v.len());
                v[i] ^= 1 << r.below(8);
            }
            1 if !v.is_empty() => {
                let at = r.below(v.len());
                v.truncate(at);
            }
            2 => {
                let at = r.below(v.len() + 1);
                let n = 1 + r.below(16);
                let extra = r.bytes(n);
                v.splice(at..at, extra);
            }
            _ => {
                let other = &seeds[r.below(seeds.len())];
                let from = r.below(other.len() + 1);
                let at = r.below(v.len() + 1);
                v.splice(at..at, other[from..].iter().copied());
            }
        }
    }
    v
}

fn replay(name: &str) {
    let target: &Target = ALL.iter().find(|t| t.name == name).expect("a known target");
    let mut inputs: Vec<(String, Vec<u8>)> = Vec::new();
    let seed_files = files(&seeds().join(name));
    let corpus_root = env::var_os("MVM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/mvm"))
        .join("fuzz/corpus")
        .join(name);
    let corpus_files = files(&corpus_root);
    for p in seed_files
        .iter()
        .chain(corpus_files.iter().take(CORPUS_CAP))
    {
        if let Ok(data) = fs::read(p) {
            inputs.push((p.display().to_string(), data));
        }
    }
    let stored = inputs.len();
    let mut r = Rand::new(name);
    let pool: Vec<Vec<u8>> = if inputs.is_empty() {
        vec![Vec::new()]
    } else {
        inputs.iter().map(|(_, d)| d.clone()).collect()
    };
    for i in 0..MUTATIONS {
        inputs.push((format!("mutation {i}"), mutate(&mut r, &pool)));
    }
    for i in 0..RANDOM_INPUTS {
        let len = r.below(if i % 4 == 0 { 4096 } else { 256 });
        inputs.push((format!("random input {i}"), r.bytes(len)));
    }
    let start = Instant::now();
    for (what, data) in &inputs {
        if catch_unwind(AssertUnwindSafe(|| (target.run)(data))).is_err() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("libfuzzer/artifacts")
                .join(name);
            fs::create_dir_all(&dir).unwrap();
            let mut h = DefaultHasher::new();
            data.hash(&mut h);
            let file = dir.join(format!("replay-{:016x}", h.finish()));
            fs::write(&file, data).unwrap();
            panic!(
                "fuzz target {name} panicked on {what} (saved as {}; reproduce with \
                 `cd fuzz/libfuzzer && cargo fuzz run --fuzz-dir . {name} {}`)",
                file.display(),
                file.display()
            );
        }
    }
    eprintln!(
        "{name}: {} inputs ({stored} seeds and corpus from {}) in {:.1} s",
        inputs.len(),
        corpus_root.display(),
        start.elapsed().as_secs_f64()
    );
}

macro_rules! replays {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { replay(stringify!($name)); })*

        /// Every target in `ALL` has a test above.
        #[test]
        fn every_target_is_replayed() {
            let tested = [$(stringify!($name)),*];
            for t in ALL {
                assert!(tested.contains(&t.name), "no replay test for target {}", t.name);
            }
        }
    };
}

replays!(
    virtio_block,
    virtio_net,
    virtio_vsock,
    mmio_transport,
    agent_frames,
    launch_spec,
    layer_unpack,
    cp_extract,
    dockerfile,
    image_reference,
    image_manifest,
    rest_create,
);
