//! The build engine: stages, each instruction's effect on the image config
//! and filesystem, the layer cache, and progress.
//!
//! Metadata instructions (ENV, LABEL, WORKDIR, ...) change the config in
//! memory. COPY and ADD are done on the host: the sources are planned and
//! hashed (the hash is part of the cache key), then written as a tar
//! layer. RUN boots a build microVM through an [`Executor`] on the image
//! so far and turns its overlay upper directory into a layer. After each
//! layer step the image is stored untagged and recorded in the cache.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mvm_images::digest::Hasher;
use mvm_images::manifest::{self, media_type, Descriptor, Manifest, MAX_CONFIG_SIZE};
use mvm_images::{Digest, Lease, Reference, RootDiskOptions, Store, StoreError};
use serde_json::{json, Value};

use crate::cache::{Cache, Key};
use crate::context::{self, Context, ContextError};
use crate::dockerfile::shell::{self, Vars};
use crate::dockerfile::{self, Command, CopyArgs, Dockerfile, Healthcheck, Instruction, Kind};
use crate::fetch;
use crate::progress::{secs, Event, Progress};
use crate::tarlayer::{self, LayerWriter, Meta};
use crate::vm::{self, Executor, RunRequest};

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Path of the Dockerfile inside the context (default `Dockerfile`).
    pub dockerfile: Option<String>,
    /// The Dockerfile's text, if it does not come from the context
    /// (`-f` outside the context, or `-f -`).
    pub dockerfile_text: Option<String>,
    /// Name used in messages for [`BuildOptions::dockerfile_text`].
    pub dockerfile_name: Option<String>,
    /// `--build-arg`.
    pub build_args: BTreeMap<String, String>,
    /// `--target`.
    pub target: Option<String>,
    /// `-t` (several allowed).
    pub tags: Vec<String>,
    /// `--label`.
    pub labels: BTreeMap<String, String>,
    /// `--no-cache`.
    pub no_cache: bool,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildResult {
    /// Manifest digest.
    pub digest: Digest,
    /// Image ID (config digest).
    pub id: Digest,
    /// Names given.
    pub tags: Vec<String>,
    /// Steps run.
    pub steps: usize,
    /// Steps served from the cache.
    pub cached: usize,
    /// Time spent booting build VMs (all RUN steps).
    pub vm_boot: Duration,
    /// Time spent in RUN VMs after boot (commands, shutdown).
    pub vm_run: Duration,
    /// Time spent turning RUN changes into layers.
    pub vm_commit: Duration,
    /// RUN steps executed.
    pub runs: usize,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The Dockerfile does not parse.
    #[error(transparent)]
    Parse(#[from] dockerfile::ParseError),
    /// The context is unusable.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A step failed; names the step and the Dockerfile line.
    #[error("{file}:{line}: step {index}/{total} `{text}`: {message}")]
    Step {
        /// Dockerfile name.
        file: String,
        /// Line.
        line: usize,
        /// Step number.
        index: usize,
        /// Step count.
        total: usize,
        /// The instruction.
        text: String,
        /// What went wrong.
        message: String,
    },
    /// A RUN command exited non-zero.
    #[error("{file}:{line}: step {index}/{total} `{text}` failed: the command exited with status {code}{}", if output.is_empty() { String::new() } else { format!("; its last output:\n{output}") })]
    RunFailed {
        /// Dockerfile name.
        file: String,
        /// Line.
        line: usize,
        /// Step number.
        index: usize,
        /// Step count.
        total: usize,
        /// The instruction.
        text: String,
        /// Exit status.
        code: i32,
        /// The last lines of output.
        output: String,
    },
    /// Bad options (target, tags, build args).
    #[error("{0}")]
    Options(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Local I/O failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Error.
        source: io::Error,
    },
}

type Result<T, E = BuildError> = std::result::Result<T, E>;

/// Lines of output kept for the error of a failing RUN.
const OUTPUT_TAIL: usize = 40;
/// Largest /etc/passwd or /etc/group read for --chown.
const MAX_PASSWD: u64 = 4 << 20;

/// The build state of one stage.
#[derive(Debug, Clone)]
struct State {
    /// The whole image config document.
    config: Value,
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    history: Vec<Value>,
    /// Stored image whose layers are exactly `layers` (for root disks).
    image: Option<Digest>,
    key: Key,
    /// ARGs in scope: name -> value (None: declared without a value).
    args: BTreeMap<String, Option<String>>,
    shell: Vec<String>,
    cmd_set: bool,
    created: String,
}

impl State {
    fn cfg(&mut self) -> &mut serde_json::Map<String, Value> {
        if !self.config.get("config").is_some_and(Value::is_object) {
            self.config["config"] = json!({});
        }
        self.config["config"]
            .as_object_mut()
            .expect("config is an object")
    }

    fn cfg_get(&self, k: &str) -> Option<&Value> {
        self.config.get("config")?.get(k)
    }

    fn env(&self) -> Vec<String> {
        self.cfg_get("Env")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn workdir(&self) -> String {
        self.cfg_get("WorkingDir")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("/")
            .to_string()
    }

    fn user(&self) -> String {
        self.cfg_get("User")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    /// Substitution variables: args in scope, overridden by ENV.
    fn vars(&self) -> Vars {
        let mut v: Vars = self
            .args
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        for e in self.env() {
            if let Some((k, val)) = e.split_once('=') {
                v.insert(k.to_string(), val.to_string());
            }
        }
        v
    }

    /// RUN's environment: ENV plus args in scope that ENV does not set.
    fn run_env(&self) -> Vec<String> {
        let mut env = self.env();
        let set: BTreeSet<String> = env
            .iter()
            .filter_map(|e| e.split_once('=').map(|(k, _)| k.to_string()))
            .collect();
        for (k, v) in &self.args {
            if let Some(v) = v {
                if !set.contains(k) {
                    env.push(format!("{k}={v}"));
                }
            }
        }
        env
    }

    fn set_env(&mut self, key: &str, value: &str) {
        let mut env = self.env();
        let entry = format!("{key}={value}");
        match env
            .iter_mut()
            .find(|e| e.split_once('=').map(|(k, _)| k) == Some(key))
        {
            Some(e) => *e = entry,
            None => env.push(entry),
        }
        self.cfg().insert("Env".into(), json!(env));
    }

    fn map_insert(&mut self, field: &str, key: String, value: Value) {
        let cfg = self.cfg();
        if !cfg.get(field).is_some_and(Value::is_object) {
            cfg.insert(field.into(), json!({}));
        }
        cfg[field]
            .as_object_mut()
            .expect("object")
            .insert(key, value);
    }

    fn push_history(&mut self, created_by: String, empty: bool) {
        let mut h =
            json!({"created": self.created, "created_by": created_by, "comment": "mvm build"});
        if empty {
            h["empty_layer"] = json!(true);
        }
        self.history.push(h);
    }
}

/// One stage of the Dockerfile.
#[derive(Debug, Clone)]
struct Stage {
    from: Instruction,
    name: Option<String>,
    body: Vec<Instruction>,
}

/// Runs builds against a store.
pub struct Builder<'a> {
    store: Store,
    cache: Cache,
    executor: Option<&'a dyn Executor>,
    progress: &'a dyn Progress,
    base_images: Option<&'a dyn BaseImages>,
}

/// Gets a base image the store lacks, for a `FROM` (mvmd pulls it from its
/// registry with the build client's credentials, as `docker build` does).
pub trait BaseImages: Send + Sync {
    /// Make `reference` available in the store, passing lines worth
    /// showing (the pull's progress) to `progress`. The error is a
    /// sentence saying what went wrong and what to do.
    fn fetch(&self, reference: &str, progress: &mut dyn FnMut(&str)) -> Result<(), String>;
}

/// Where a copy reads from.
struct Source<'c> {
    ctx: &'c Context,
    /// Apply the context's .dockerignore.
    ignore: bool,
}

/// One planned entry of a COPY/ADD layer.
#[derive(Debug)]
struct Planned {
    dest: String,
    meta: Meta,
    kind: PlanKind,
}

#[derive(Debug)]
enum PlanKind {
    Dir,
    File(PathBuf, u64),
    Bytes(Vec<u8>),
    Symlink(PathBuf),
    /// A local archive ADD extracts into `dest` ([`extract_archive`]).
    Archive {
        /// Where it is.
        path: PathBuf,
        /// Its name in the context, for messages.
        name: String,
        /// `--chown` gives every entry the step's owner; otherwise the
        /// archive's owners are kept, as Docker does.
        chown: bool,
    },
}

/// Per-step context for error messages.
struct StepInfo<'a> {
    file: &'a str,
    ins: &'a Instruction,
    index: usize,
    total: usize,
    id: usize,
}

impl StepInfo<'_> {
    fn err(&self, message: impl std::fmt::Display) -> BuildError {
        BuildError::Step {
            file: self.file.to_string(),
            line: self.ins.line,
            index: self.index,
            total: self.total,
            text: self.ins.text.clone(),
            message: message.to_string(),
        }
    }
}

fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC (days-from-civil algorithm).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

impl<'a> Builder<'a> {
    /// A builder on `store`. Without an executor, RUN steps fail with a
    /// message (metadata and COPY builds still work).
    pub fn new(
        store: Store,
        executor: Option<&'a dyn Executor>,
        progress: &'a dyn Progress,
    ) -> Result<Builder<'a>> {
        let cache = Cache::open(store.root()).map_err(|source| BuildError::Io {
            op: "opening the build cache in",
            path: store.root().to_path_buf(),
            source,
        })?;
        Ok(Builder {
            store,
            cache,
            executor,
            progress,
            base_images: None,
        })
    }

    /// Pull base images the store lacks through `b` (without it, a
    /// `FROM` of an absent image is an error that says to pull it).
    pub fn with_base_images(mut self, b: &'a dyn BaseImages) -> Self {
        self.base_images = Some(b);
        self
    }

    fn emit(&self, e: Event) {
        self.progress.event(&e);
    }

    /// Reads and parses the Dockerfile the options name.
    pub fn dockerfile(&self, ctx: &Context, opts: &BuildOptions) -> Result<Dockerfile> {
        if let Some(text) = &opts.dockerfile_text {
            let name = opts.dockerfile_name.as_deref().unwrap_or("Dockerfile");
            return Ok(dockerfile::parse(name, text)?);
        }
        let name = opts.dockerfile.as_deref().unwrap_or("Dockerfile");
        let bytes = ctx.read_file(name).map_err(|e| match e {
            ContextError::NotFound(..) => BuildError::Options(format!(
                "no Dockerfile {name:?} in the build context; name it with -f"
            )),
            e => e.into(),
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|_| BuildError::Options(format!("{name} is not valid UTF-8")))?;
        Ok(dockerfile::parse(name, &text)?)
    }

    /// Builds the image.
    pub fn build(&self, ctx: &Context, opts: &BuildOptions) -> Result<BuildResult> {
        let started = Instant::now();
        let df = self.dockerfile(ctx, opts)?;
        let tags: Vec<Reference> = opts
            .tags
            .iter()
            .map(|t| {
                Reference::parse(t)
                    .map_err(|e| BuildError::Options(format!("invalid tag {t:?}: {e}")))
            })
            .collect::<Result<_>>()?;
        for k in opts.build_args.keys() {
            if !dockerfile::valid_name(k) {
                return Err(BuildError::Options(format!(
                    "invalid --build-arg name {k:?}"
                )));
            }
        }
        // Global ARGs (before the first FROM) and stages.
        let mut global: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut stages: Vec<Stage> = Vec::new();
        for ins in &df.instructions {
            match &ins.kind {
                Kind::From { name, .. } => stages.push(Stage {
                    from: ins.clone(),
                    name: name.clone(),
                    body: Vec::new(),
                }),
                Kind::Arg(args) if stages.is_empty() => {
                    for (k, default) in args {
                        let vars: Vars = global
                            .iter()
                            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
                            .collect();
                        let v = match opts.build_args.get(k) {
                            Some(v) => Some(v.clone()),
                            None => match default {
                                Some(d) => {
                                    Some(shell::process_word(d, &vars, df.escape).map_err(|e| {
                                        dockerfile::ParseError {
                                            file: df.file.clone(),
                                            line: ins.line,
                                            message: format!("ARG {k}: {e}"),
                                        }
                                    })?)
                                }
                                None => None,
                            },
                        };
                        global.insert(k.clone(), v);
                    }
                }
                _ => stages
                    .last_mut()
                    .expect("the parser checks FROM comes first")
                    .body
                    .push(ins.clone()),
            }
        }
        let target = match &opts.target {
            Some(t) => stages
                .iter()
                .position(|s| s.name.as_deref() == Some(&t.to_ascii_lowercase()))
                .ok_or_else(|| {
                    BuildError::Options(format!(
                        "target stage {t:?} not found in {}; stages are: {}",
                        df.file,
                        stages
                            .iter()
                            .enumerate()
                            .map(|(i, s)| s.name.clone().unwrap_or_else(|| i.to_string()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?,
            None => stages.len() - 1,
        };
        let global_vars: Vars = global
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
            .collect();
        let needed = self.needed_stages(&df, &stages, target, &global_vars)?;
        let total: usize = needed.iter().map(|&i| 1 + stages[i].body.len()).sum();

        let lease = self.store.lease()?;
        let mut done: HashMap<usize, State> = HashMap::new();
        let mut unpacked: HashMap<String, tempfile::TempDir> = HashMap::new();
        let mut counter = Counter::default();
        let mut index = 0usize;
        for &si in &needed {
            let stage = &stages[si];
            let stage_label = stage.name.clone().unwrap_or_else(|| format!("stage-{si}"));
            index += 1;
            let from_info = StepInfo {
                file: &df.file,
                ins: &stage.from,
                index,
                total,
                id: index,
            };
            let mut st = self.from(
                &df,
                &stage.from,
                &stages,
                &done,
                &global,
                &global_vars,
                &lease,
                &from_info,
                &stage_label,
            )?;
            counter.steps += 1;
            // ONBUILD triggers of the base run first.
            let triggers: Vec<String> = st
                .cfg_get("OnBuild")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !triggers.is_empty() {
                st.cfg().remove("OnBuild");
            }
            let mut body: Vec<Instruction> = Vec::new();
            for t in &triggers {
                body.push(dockerfile::parse_line(
                    &df.file,
                    stage.from.line,
                    t,
                    df.escape,
                )?);
            }
            let trigger_count = body.len();
            body.extend(stage.body.iter().cloned());
            for (n, ins) in body.iter().enumerate() {
                let is_trigger = n < trigger_count;
                if !is_trigger {
                    index += 1;
                }
                let info = StepInfo {
                    file: &df.file,
                    ins,
                    index,
                    total,
                    id: index,
                };
                self.emit(Event::Step {
                    id: info.id,
                    index,
                    total,
                    stage: stage_label.clone(),
                    text: if is_trigger {
                        format!("ONBUILD {}", ins.text)
                    } else {
                        ins.text.clone()
                    },
                });
                let t0 = Instant::now();
                let cached = self.step(
                    &df,
                    &mut st,
                    ins,
                    &info,
                    opts,
                    ctx,
                    &stages,
                    &done,
                    &mut unpacked,
                    &lease,
                    &mut counter,
                )?;
                if cached {
                    counter.cached += 1;
                    self.emit(Event::Cached { id: info.id });
                } else {
                    self.emit(Event::Done {
                        id: info.id,
                        seconds: secs(t0.elapsed()),
                    });
                }
                counter.steps += 1;
            }
            done.insert(si, st);
        }
        let mut st = done.remove(&target).expect("the target stage was built");
        for (k, v) in &opts.labels {
            st.map_insert("Labels", k.clone(), json!(v));
        }
        let unused: Vec<&String> = opts
            .build_args
            .keys()
            .filter(|k| !counter.used_args.contains(*k) && !global.contains_key(*k))
            .collect();
        if !unused.is_empty() {
            self.emit(Event::Message {
                text: format!(
                    "[warning]: build-args not consumed by any ARG: {}",
                    unused
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let (digest, id) = self.store_image(&lease, &st)?;
        let mut names = Vec::new();
        if tags.is_empty() {
            self.store.add_untagged(&digest)?;
        }
        for t in &tags {
            self.store.tag(t, &digest)?;
            names.push(t.to_string());
        }
        let elapsed = started.elapsed();
        self.emit(Event::Result {
            id: id.to_string(),
            digest: digest.to_string(),
            tags: names.clone(),
            seconds: secs(elapsed),
        });
        drop(lease);
        Ok(BuildResult {
            digest,
            id,
            tags: names,
            steps: counter.steps,
            cached: counter.cached,
            vm_boot: counter.boot,
            vm_run: counter.run,
            vm_commit: counter.commit,
            runs: counter.runs,
            elapsed,
        })
    }

    /// The stages the target needs, in build order.
    fn needed_stages(
        &self,
        df: &Dockerfile,
        stages: &[Stage],
        target: usize,
        global: &Vars,
    ) -> Result<Vec<usize>> {
        let find = |name: &str, before: usize| -> Option<usize> {
            let lower = name.to_ascii_lowercase();
            if let Some(i) = stages[..before]
                .iter()
                .position(|s| s.name.as_deref() == Some(lower.as_str()))
            {
                return Some(i);
            }
            name.parse::<usize>().ok().filter(|&i| i < before)
        };
        let mut need = BTreeSet::new();
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !need.insert(i) {
                continue;
            }
            if let Kind::From { image, .. } = &stages[i].from.kind {
                let img = shell::process_word(image, global, df.escape).unwrap_or_default();
                if let Some(d) = find(&img, i) {
                    todo.push(d);
                }
            }
            for ins in &stages[i].body {
                if let Kind::Copy(c) = &ins.kind {
                    if let Some((_, from)) = c.flags.iter().find(|(k, _)| k == "from") {
                        let from = shell::process_word(from, global, df.escape).unwrap_or_default();
                        if let Some(d) = find(&from, i) {
                            todo.push(d);
                        } else if from.parse::<usize>().is_ok() {
                            return Err(BuildError::Step {
                                file: df.file.clone(),
                                line: ins.line,
                                index: 0,
                                total: 0,
                                text: ins.text.clone(),
                                message: format!("--from={from} names a stage that is not defined before this one"),
                            });
                        }
                    }
                }
            }
        }
        Ok(need.into_iter().collect())
    }

    #[allow(clippy::too_many_arguments)]
    fn from(
        &self,
        df: &Dockerfile,
        ins: &Instruction,
        stages: &[Stage],
        done: &HashMap<usize, State>,
        global: &BTreeMap<String, Option<String>>,
        global_vars: &Vars,
        lease: &Lease,
        info: &StepInfo<'_>,
        stage_label: &str,
    ) -> Result<State> {
        let Kind::From {
            image, platform, ..
        } = &ins.kind
        else {
            unreachable!("stages start with FROM")
        };
        self.emit(Event::Step {
            id: info.id,
            index: info.index,
            total: info.total,
            stage: stage_label.to_string(),
            text: ins.text.clone(),
        });
        let t0 = Instant::now();
        if let Some(p) = platform {
            let p = shell::process_word(p, global_vars, df.escape).map_err(|e| info.err(e))?;
            if p != "linux/amd64" && p != "linux/x86_64" {
                return Err(info.err(format!(
                    "platform {p} is not supported: mvm builds linux/amd64 images"
                )));
            }
        }
        let image = shell::process_word(image, global_vars, df.escape).map_err(|e| info.err(e))?;
        let _ = global;
        let lower = image.to_ascii_lowercase();
        let before = &stages[..stages
            .iter()
            .position(|s| std::ptr::eq(&s.from, ins) || s.from == *ins)
            .unwrap_or(stages.len())];
        let stage_ref = before
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()));
        let mut st = if let Some(i) = stage_ref {
            let parent = done
                .get(&i)
                .ok_or_else(|| info.err(format!("stage {image} was not built")))?
                .clone();
            let mut st = parent;
            st.key = st.key.child(&["FROM-STAGE"]);
            st.args.clear();
            st.cmd_set = false;
            st
        } else if lower == "scratch" {
            State {
                config: json!({"architecture": "amd64", "os": "linux", "config": {}}),
                layers: Vec::new(),
                diff_ids: Vec::new(),
                history: Vec::new(),
                image: None,
                key: Key::root("scratch"),
                args: BTreeMap::new(),
                shell: vec!["/bin/sh".into(), "-c".into()],
                cmd_set: false,
                created: "1970-01-01T00:00:00Z".into(),
            }
        } else {
            let rec = match (self.store.resolve(&image), self.base_images) {
                (Err(StoreError::ImageNotFound(_)), Some(b)) => {
                    let mut say = |line: &str| {
                        self.emit(Event::Output {
                            id: info.id,
                            elapsed: secs(t0.elapsed()),
                            line: line.to_string(),
                        })
                    };
                    b.fetch(&image, &mut say).map_err(|e| {
                        info.err(format!("base image {image} is not in the image store and pulling it failed: {e}"))
                    })?;
                    self.store.resolve(&image).map_err(|e| info.err(e))?
                }
                (r, _) => r.map_err(|e| match e {
                    StoreError::ImageNotFound(_) => info.err(format!(
                        "base image {image} is not in the image store; pull or import it first (mvctl pull {image})"
                    )),
                    e => info.err(e),
                })?,
            };
            for l in &rec.manifest.layers {
                lease.pin_blob(&l.digest)?;
            }
            lease.pin_blob(&rec.manifest.config.digest)?;
            let bytes = self
                .store
                .read_blob(&rec.manifest.config.digest, MAX_CONFIG_SIZE)?;
            let config: Value = serde_json::from_slice(&bytes)
                .map_err(|e| info.err(format!("the base image's config is invalid: {e}")))?;
            let history = config
                .get("history")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let shell = config
                .get("config")
                .and_then(|c| c.get("Shell"))
                .and_then(|s| serde_json::from_value::<Vec<String>>(s.clone()).ok())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            let created = config
                .get("created")
                .and_then(Value::as_str)
                .unwrap_or("1970-01-01T00:00:00Z")
                .to_string();
            State {
                config,
                layers: rec.manifest.layers.clone(),
                diff_ids: rec.diff_ids.clone(),
                history,
                image: Some(rec.manifest_digest),
                key: Key::root(&rec.manifest_digest.to_string()),
                args: BTreeMap::new(),
                shell,
                cmd_set: false,
                created,
            }
        };
        st.key = st.key.child(&["FROM", &image]);
        self.emit(Event::Done {
            id: info.id,
            seconds: secs(t0.elapsed()),
        });
        Ok(st)
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        df: &Dockerfile,
        st: &mut State,
        ins: &Instruction,
        info: &StepInfo<'_>,
        opts: &BuildOptions,
        ctx: &Context,
        stages: &[Stage],
        done: &HashMap<usize, State>,
        unpacked: &mut HashMap<String, tempfile::TempDir>,
        lease: &Lease,
        counter: &mut Counter,
    ) -> Result<bool> {
        let esc = df.escape;
        let vars = st.vars();
        let word = |w: &str| shell::process_word(w, &vars, esc).map_err(|e| info.err(e));
        let words = |w: &str| shell::process_words(w, &vars, esc).map_err(|e| info.err(e));
        match &ins.kind {
            Kind::From { .. } => unreachable!("FROM starts a stage"),
            Kind::Env(pairs) => {
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    let k = word(k)?;
                    if !dockerfile::valid_name(&k) && k.contains(['=', ' ']) {
                        return Err(info.err(format!("invalid ENV name {k:?}")));
                    }
                    let v = word(v)?;
                    st.set_env(&k, &v);
                    shown.push(format!("{k}={v}"));
                }
                self.meta(st, format!("ENV {}", shown.join(" ")));
            }
            Kind::Arg(args) => {
                let mut shown = Vec::new();
                for (k, default) in args {
                    let v = match opts.build_args.get(k) {
                        Some(v) => {
                            counter.used_args.insert(k.clone());
                            Some(v.clone())
                        }
                        None => match default {
                            Some(d) => Some(word(d)?),
                            None => None,
                        },
                    };
                    shown.push(match &v {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    });
                    st.args.insert(k.clone(), v);
                }
                st.key = st.key.child(&["ARG", &shown.join(" ")]);
            }
            Kind::Label(pairs) => {
                let mut shown = Vec::new();
                for (k, v) in pairs {
                    let (k, v) = (word(k)?, word(v)?);
                    shown.push(format!("{k}={v}"));
                    st.map_insert("Labels", k, json!(v));
                }
                self.meta(st, format!("LABEL {}", shown.join(" ")));
            }
            Kind::Maintainer(m) => {
                st.config["author"] = json!(m);
                self.meta(st, format!("MAINTAINER {m}"));
            }
            Kind::Expose(raw) => {
                let mut shown = Vec::new();
                for p in words(raw)? {
                    let (port, proto) = match p.split_once('/') {
                        Some((a, b)) => (a.to_string(), b.to_ascii_lowercase()),
                        None => (p.clone(), "tcp".to_string()),
                    };
                    let valid_port = |s: &str| s.parse::<u16>().is_ok();
                    let ok = match port.split_once('-') {
                        Some((a, b)) => valid_port(a) && valid_port(b),
                        None => valid_port(&port),
                    };
                    if !ok || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
                        return Err(
                            info.err(format!("invalid port {p:?}: use PORT[/tcp|udp|sctp]"))
                        );
                    }
                    let k = format!("{port}/{proto}");
                    st.map_insert("ExposedPorts", k.clone(), json!({}));
                    shown.push(k);
                }
                self.meta(st, format!("EXPOSE map[{}]", shown.join(" ")));
            }
            Kind::Volume(v) => {
                let list = match v {
                    Ok(list) => list.iter().map(|s| word(s)).collect::<Result<Vec<_>>>()?,
                    Err(raw) => words(raw)?,
                };
                if list.iter().any(|s| s.is_empty()) {
                    return Err(info.err("VOLUME paths must not be empty"));
                }
                for p in &list {
                    st.map_insert("Volumes", p.clone(), json!({}));
                }
                self.meta(st, format!("VOLUME {list:?}"));
            }
            Kind::User(u) => {
                let u = word(u)?;
                st.cfg().insert("User".into(), json!(u));
                self.meta(st, format!("USER {u}"));
            }
            Kind::Workdir(w) => {
                let w = word(w)?;
                let joined = if w.starts_with('/') {
                    w.clone()
                } else {
                    format!("{}/{w}", st.workdir())
                };
                let clean = format!("/{}", context::clean_rel(&joined).unwrap_or_default());
                st.cfg().insert("WorkingDir".into(), json!(clean));
                self.meta(st, format!("WORKDIR {clean}"));
            }
            Kind::StopSignal(s) => {
                let s = word(s)?;
                let ok = s.parse::<u32>().is_ok_and(|n| (1..=64).contains(&n))
                    || s.to_ascii_uppercase()
                        .trim_start_matches("SIG")
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
                        && !s.is_empty();
                if !ok {
                    return Err(info.err(format!("invalid STOPSIGNAL {s:?}")));
                }
                st.cfg().insert("StopSignal".into(), json!(s));
                self.meta(st, format!("STOPSIGNAL {s}"));
            }
            Kind::Shell(sh) => {
                st.shell = sh.clone();
                st.cfg().insert("Shell".into(), json!(sh));
                self.meta(st, format!("SHELL {sh:?}"));
            }
            Kind::Cmd(c) => {
                let argv = self.argv(st, c);
                st.cfg().insert("Cmd".into(), json!(argv));
                st.cmd_set = true;
                self.meta(
                    st,
                    format!("CMD {}", serde_json::to_string(&argv).unwrap_or_default()),
                );
            }
            Kind::Entrypoint(c) => {
                let argv = self.argv(st, c);
                st.cfg().insert("Entrypoint".into(), json!(argv));
                if !st.cmd_set {
                    st.cfg().insert("Cmd".into(), Value::Null);
                }
                self.meta(
                    st,
                    format!(
                        "ENTRYPOINT {}",
                        serde_json::to_string(&argv).unwrap_or_default()
                    ),
                );
            }
            Kind::Healthcheck(h) => {
                let v = match h {
                    Healthcheck::None => json!({"Test": ["NONE"]}),
                    Healthcheck::Cmd { flags, command } => {
                        let test = match command {
                            Command::Exec(v) => {
                                let mut t = vec!["CMD".to_string()];
                                t.extend(v.iter().cloned());
                                t
                            }
                            Command::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                        };
                        let mut v = json!({"Test": test});
                        for (k, val) in flags {
                            let field = match k.as_str() {
                                "interval" => "Interval",
                                "timeout" => "Timeout",
                                "start-period" => "StartPeriod",
                                "start-interval" => "StartInterval",
                                _ => "Retries",
                            };
                            v[field] = if field == "Retries" {
                                json!(val.parse::<u32>().unwrap_or(0))
                            } else {
                                json!(dockerfile::parse_duration(val).unwrap_or(0))
                            };
                        }
                        v
                    }
                };
                st.cfg().insert("Healthcheck".into(), v.clone());
                self.meta(st, format!("HEALTHCHECK {v}"));
            }
            Kind::Onbuild(t) => {
                let mut list = st
                    .cfg_get("OnBuild")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                list.push(json!(t));
                st.cfg().insert("OnBuild".into(), json!(list));
                self.meta(st, format!("ONBUILD {t}"));
            }
            Kind::Run {
                command, heredocs, ..
            } => {
                return self.run(st, ins, info, command, heredocs, opts, lease, counter);
            }
            Kind::Copy(c) | Kind::Add(c) => {
                let add = matches!(ins.kind, Kind::Add(_));
                return self.copy(
                    df, st, info, c, add, opts, ctx, stages, done, unpacked, lease, &vars,
                );
            }
        }
        Ok(false)
    }

    /// A metadata step: new config, an empty-layer history entry.
    fn meta(&self, st: &mut State, created_by: String) {
        st.key = st.key.child(&["META", &created_by]);
        st.push_history(created_by, true);
    }

    fn argv(&self, st: &State, c: &Command) -> Vec<String> {
        match c {
            Command::Exec(v) => v.clone(),
            Command::Shell(s) => {
                let mut v = st.shell.clone();
                v.push(s.clone());
                v
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        st: &mut State,
        ins: &Instruction,
        info: &StepInfo<'_>,
        command: &Command,
        heredocs: &[dockerfile::Heredoc],
        opts: &BuildOptions,
        lease: &Lease,
        counter: &mut Counter,
    ) -> Result<bool> {
        let argv = match command {
            Command::Shell(s) if !heredocs.is_empty() => {
                let only = heredocs.len() == 1 && {
                    let t = s.trim();
                    let h = &heredocs[0];
                    t == format!("<<{}", h.name)
                        || t == format!("<<-{}", h.name)
                        || t == format!("<<\"{}\"", h.name)
                        || t == format!("<<'{}'", h.name)
                };
                let mut v = st.shell.clone();
                if only {
                    v.push(heredocs[0].content.clone());
                } else {
                    let mut script = s.clone();
                    script.push('\n');
                    for h in heredocs {
                        script.push_str(&h.content);
                        script.push_str(&h.name);
                        script.push('\n');
                    }
                    v.push(script);
                }
                v
            }
            c => self.argv(st, c),
        };
        // Args in scope are part of RUN's environment (and so its key).
        for (k, v) in &st.args {
            if v.is_some() && opts.build_args.contains_key(k) {
                counter.used_args.insert(k.clone());
            }
        }
        let env = st.run_env();
        let user = st.user();
        let cwd = st.workdir();
        let argv_json = serde_json::to_string(&argv).unwrap_or_default();
        let env_json = serde_json::to_string(&env).unwrap_or_default();
        let key = st.key.child(&["RUN", &argv_json, &env_json, &user, &cwd]);
        let created_by = format!("RUN {}", shell_words(&argv));
        if !opts.no_cache && self.try_cache(st, &key, lease)? {
            return Ok(true);
        }
        let executor = self.executor.ok_or_else(|| {
            info.err("RUN needs microVMs, and this builder was made without a runtime to boot them (builds through mvmd always have one)")
        })?;
        let rec = match &st.image {
            Some(d) => self.store.image_at(d)?,
            None => {
                let d = self.store_image(lease, st)?.0;
                st.image = Some(d);
                self.store.image_at(&d)?
            }
        };
        let disk = self
            .store
            .root_disk(&rec, &RootDiskOptions::default())
            .map_err(|e| info.err(format!("building the root disk: {e}")))?;
        lease.pin_disk(&disk.key)?;
        let dir = tempfile::Builder::new()
            .prefix("build-run-")
            .tempdir_in(lease.tmp_dir())
            .map_err(|source| BuildError::Io {
                op: "creating a temp dir in",
                path: lease.tmp_dir(),
                source,
            })?;
        let req = RunRequest {
            root_disk: disk.path.clone(),
            argv,
            env,
            user,
            cwd,
            dir: dir.path().to_path_buf(),
        };
        let t0 = Instant::now();
        let mut tail: std::collections::VecDeque<String> = Default::default();
        let outcome = executor
            .run(&req, &mut |line| {
                self.emit(Event::Output {
                    id: info.id,
                    elapsed: secs(t0.elapsed()),
                    line: line.to_string(),
                });
                if tail.len() == OUTPUT_TAIL {
                    tail.pop_front();
                }
                tail.push_back(line.to_string());
            })
            .map_err(|e| info.err(e))?;
        counter.runs += 1;
        counter.boot += outcome.boot;
        let run_time = outcome.run;
        counter.run += run_time;
        if !outcome.exit.success() {
            let mut output: Vec<String> = tail.into_iter().collect();
            if let vm::Exit::InitError { message, .. } = &outcome.exit {
                output.push(format!("(init: {message})"));
            }
            let e = BuildError::RunFailed {
                file: info.file.to_string(),
                line: ins.line,
                index: info.index,
                total: info.total,
                text: ins.text.clone(),
                code: outcome.exit.code(),
                output: output.join("\n"),
            };
            self.emit(Event::Error {
                id: info.id,
                message: e.to_string(),
            });
            return Err(e);
        }
        let t1 = Instant::now();
        let layer = outcome
            .layer
            .ok_or_else(|| info.err("the RUN step succeeded but its changes did not arrive"))?;
        self.add_layer(st, lease, &layer.path, created_by, &key)?;
        let _ = fs::remove_file(&layer.path);
        let commit = outcome.commit + t1.elapsed();
        counter.commit += commit;
        self.emit(Event::RunTiming {
            id: info.id,
            boot_seconds: secs(outcome.boot),
            run_seconds: secs(run_time),
            commit_seconds: secs(commit),
        });
        Ok(false)
    }

    /// On a hit, adopts the cached image's layers and history.
    fn try_cache(&self, st: &mut State, key: &Key, lease: &Lease) -> Result<bool> {
        let Some(d) = self.cache.get(key) else {
            return Ok(false);
        };
        lease.pin_blob(&d)?;
        let Ok(rec) = self.store.image_at(&d) else {
            return Ok(false);
        };
        if rec.diff_ids.len() != st.diff_ids.len() + 1 || !rec.diff_ids.starts_with(&st.diff_ids) {
            return Ok(false);
        }
        for l in &rec.manifest.layers {
            lease.pin_blob(&l.digest)?;
        }
        lease.pin_blob(&rec.manifest.config.digest)?;
        let bytes = self
            .store
            .read_blob(&rec.manifest.config.digest, MAX_CONFIG_SIZE)?;
        let Ok(cfg) = serde_json::from_slice::<Value>(&bytes) else {
            return Ok(false);
        };
        st.layers = rec.manifest.layers.clone();
        st.diff_ids = rec.diff_ids.clone();
        st.history = cfg
            .get("history")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(c) = cfg.get("created").and_then(Value::as_str) {
            st.created = c.to_string();
        }
        st.image = Some(d);
        st.key = key.clone();
        Ok(true)
    }

    /// Stores a new layer (an uncompressed tar at `path`), then the image
    /// with it, and records it in the cache under `key`.
    fn add_layer(
        &self,
        st: &mut State,
        lease: &Lease,
        path: &Path,
        created_by: String,
        key: &Key,
    ) -> Result<()> {
        let f = File::open(path).map_err(|source| BuildError::Io {
            op: "opening",
            path: path.to_path_buf(),
            source,
        })?;
        let blob = self.store.put_blob(lease, None, f)?;
        lease.pin_blob(&blob.digest)?;
        let _ = fs::remove_file(path);
        st.layers.push(Descriptor::new(
            media_type::OCI_LAYER_TAR,
            blob.digest,
            blob.size,
        ));
        st.diff_ids.push(blob.digest);
        st.created = now_rfc3339();
        st.push_history(created_by, false);
        let (d, _) = self.store_image(lease, st)?;
        self.store.add_untagged(&d)?;
        st.image = Some(d);
        st.key = key.clone();
        if let Err(e) = self.cache.put(key, &d) {
            tracing::warn!("recording the build cache entry failed: {e}");
        }
        Ok(())
    }

    /// Writes config and manifest for the state; returns (manifest
    /// digest, image ID). The image is not named.
    fn store_image(&self, lease: &Lease, st: &State) -> Result<(Digest, Digest)> {
        let mut cfg = st.config.clone();
        cfg["architecture"] = json!("amd64");
        cfg["os"] = json!("linux");
        cfg["created"] = json!(st.created);
        cfg["rootfs"] = json!({
            "type": "layers",
            "diff_ids": st.diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        });
        cfg["history"] = json!(st.history);
        let bytes = serde_json::to_vec(&cfg).expect("config serialises");
        manifest::parse_config(&bytes).map_err(|source| StoreError::Manifest {
            digest: Digest::of(&bytes),
            source,
        })?;
        let c = self.store.put_blob_bytes(lease, None, &bytes)?;
        lease.pin_blob(&c.digest)?;
        let m = Manifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.to_string()),
            config: Descriptor::new(media_type::OCI_CONFIG, c.digest, c.size),
            layers: st.layers.clone(),
            annotations: None,
        };
        let mbytes = serde_json::to_vec(&m).expect("manifest serialises");
        let (info, _) = self.store.put_manifest(lease, None, &mbytes)?;
        lease.pin_blob(&info.digest)?;
        Ok((info.digest, c.digest))
    }

    #[allow(clippy::too_many_arguments)]
    fn copy(
        &self,
        df: &Dockerfile,
        st: &mut State,
        info: &StepInfo<'_>,
        c: &CopyArgs,
        add: bool,
        opts: &BuildOptions,
        ctx: &Context,
        stages: &[Stage],
        done: &HashMap<usize, State>,
        unpacked: &mut HashMap<String, tempfile::TempDir>,
        lease: &Lease,
        vars: &Vars,
    ) -> Result<bool> {
        let esc = df.escape;
        let word = |w: &str| -> Result<String> {
            if c.json {
                Ok(expand_vars(w, vars))
            } else {
                shell::process_word(w, vars, esc).map_err(|e| info.err(e))
            }
        };
        let mut from = None;
        let mut chown = None;
        let mut chmod = None;
        let mut checksum = None;
        for (k, v) in &c.flags {
            match k.as_str() {
                "checksum" if add => {
                    checksum = Some(shell::process_word(v, vars, esc).map_err(|e| info.err(e))?)
                }
                "from" => from = Some(shell::process_word(v, vars, esc).map_err(|e| info.err(e))?),
                "chown" => {
                    chown = Some(shell::process_word(v, vars, esc).map_err(|e| info.err(e))?)
                }
                "chmod" => {
                    let m = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            info.err(format!("--chmod={v}: give an octal mode such as 644"))
                        })?;
                    chmod = Some(m);
                }
                // --link and friends change how BuildKit stores layers,
                // not what they contain.
                _ => {}
            }
        }
        let (srcs_raw, dest_raw) = c.args.split_at(c.args.len() - 1);
        let dest_word = word(&dest_raw[0])?;
        let workdir = st.workdir();
        let dest_abs = if dest_word.starts_with('/') {
            dest_word.clone()
        } else {
            format!("{}/{dest_word}", workdir.trim_end_matches('/'))
        };
        let dest_dir_hint = dest_word.ends_with('/')
            || dest_word == "."
            || dest_word.ends_with("/.")
            || dest_word.is_empty();
        let dest = context::clean_rel(&dest_abs).unwrap_or_default();
        let (uid, gid) = match &chown {
            Some(spec) => self.resolve_chown(st, spec).map_err(|e| info.err(e))?,
            None => (0, 0),
        };
        // Where the sources come from.
        let from_ctx;
        let src = match &from {
            Some(f) if add => {
                return Err(info.err(format!("ADD does not take --from ({f}); use COPY --from")))
            }
            Some(f) => {
                let key = f.to_ascii_lowercase();
                if !unpacked.contains_key(&key) {
                    let idx = stages
                        .iter()
                        .position(|s| s.name.as_deref() == Some(key.as_str()))
                        .or_else(|| key.parse::<usize>().ok());
                    let layers = match idx.and_then(|i| done.get(&i)) {
                        Some(s) => s.layers.clone(),
                        None => {
                            let rec = self.store.resolve(f).map_err(|e| {
                                info.err(format!(
                                    "--from={f}: not a previous stage and not an image in the store ({e})"
                                ))
                            })?;
                            rec.manifest.layers.clone()
                        }
                    };
                    let dir = tempfile::Builder::new()
                        .prefix("build-from-")
                        .tempdir_in(lease.tmp_dir())
                        .map_err(|source| BuildError::Io {
                            op: "creating a temp dir in",
                            path: lease.tmp_dir(),
                            source,
                        })?;
                    tarlayer::unpack_layers(&self.store, &layers, dir.path())
                        .map_err(|e| info.err(format!("reading --from={f}: {e}")))?;
                    unpacked.insert(key.clone(), dir);
                }
                from_ctx = Context::from_dir_unfiltered(unpacked[&key].path())?;
                Source {
                    ctx: &from_ctx,
                    ignore: false,
                }
            }
            None => Source { ctx, ignore: true },
        };
        // Plan.
        let mut plan: Vec<Planned> = Vec::new();
        // Downloads of `ADD <url>` live here until the layer is written.
        let mut downloads: Option<tempfile::TempDir> = None;
        let multiple = srcs_raw.len() > 1;
        let meta_for = |md: &fs::Metadata, _is_dir: bool| Meta {
            mode: chmod.unwrap_or(md.mode() & 0o7777),
            uid,
            gid,
            mtime: md.mtime().max(0) as u64,
        };
        let mut shown_srcs = Vec::new();
        for s in srcs_raw {
            if let Some(h) = s
                .strip_prefix("<<")
                .map(|n| {
                    n.trim_start_matches('-')
                        .trim_matches(|c| c == '"' || c == '\'')
                })
                .and_then(|n| c.heredocs.iter().find(|h| h.name == n))
            {
                let content = if h.expand {
                    expand_vars(&h.content, vars)
                } else {
                    h.content.clone()
                };
                let target = if dest_dir_hint || multiple {
                    join(&dest, &h.name)
                } else {
                    dest.clone()
                };
                shown_srcs.push(format!("<<{}", h.name));
                plan.push(Planned {
                    dest: target,
                    meta: Meta {
                        mode: chmod.unwrap_or(0o644),
                        uid,
                        gid,
                        mtime: 0,
                    },
                    kind: PlanKind::Bytes(content.into_bytes()),
                });
                continue;
            }
            let s = word(s)?;
            if add && fetch::is_url(&s) {
                let target = if dest_dir_hint || multiple {
                    let name = fetch::file_name(&s).ok_or_else(|| {
                        info.err(format!(
                            "ADD {s}: cannot tell a file name from the URL; give the destination file name instead of a directory"
                        ))
                    })?;
                    join(&dest, &name)
                } else {
                    dest.clone()
                };
                if target.is_empty() {
                    return Err(info.err("cannot ADD a file onto the root directory; give a destination directory ending in /"));
                }
                let dir = match downloads {
                    Some(ref d) => d,
                    None => downloads.insert(
                        tempfile::Builder::new()
                            .prefix("build-add-")
                            .tempdir_in(lease.tmp_dir())
                            .map_err(|source| BuildError::Io {
                                op: "creating a temp dir in",
                                path: lease.tmp_dir(),
                                source,
                            })?,
                    ),
                };
                let path = dir.path().join(format!("{}", plan.len()));
                let got = fetch::fetch(&s, &path, checksum.as_deref()).map_err(|e| info.err(e))?;
                shown_srcs.push(s.clone());
                plan.push(Planned {
                    dest: target,
                    meta: Meta {
                        mode: chmod.unwrap_or(0o600),
                        uid,
                        gid,
                        mtime: got.last_modified.unwrap_or_else(fetch::now_secs),
                    },
                    kind: PlanKind::File(got.path, got.size),
                });
                continue;
            }
            if checksum.is_some() {
                return Err(info.err(format!(
                    "ADD --checksum applies to URL sources only, not {s:?}"
                )));
            }
            shown_srcs.push(s.clone());
            let rels = src.ctx.expand(&s)?;
            let many = multiple || rels.len() > 1;
            for rel in rels {
                let (abs, rel) = src.ctx.resolve(&rel, true)?;
                let md = fs::metadata(&abs).map_err(|source| BuildError::Io {
                    op: "reading",
                    path: abs.clone(),
                    source,
                })?;
                if md.is_dir() {
                    if chown.is_some() && !dest.is_empty() {
                        plan.push(Planned {
                            dest: dest.clone(),
                            meta: Meta {
                                mode: 0o755,
                                ..meta_for(&md, true)
                            },
                            kind: PlanKind::Dir,
                        });
                    }
                    self.plan_dir(&src, &abs, &rel, &dest, &mut plan, &meta_for)?;
                    continue;
                }
                let base = Path::new(&rel)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if add && is_archive(&abs) {
                    plan.push(Planned {
                        dest: dest.clone(),
                        meta: meta_for(&md, false),
                        kind: PlanKind::Archive {
                            path: abs.clone(),
                            name: rel.clone(),
                            chown: chown.is_some(),
                        },
                    });
                    continue;
                }
                let target = if dest_dir_hint || many {
                    join(&dest, &base)
                } else {
                    dest.clone()
                };
                if target.is_empty() {
                    return Err(info.err("cannot copy a file onto the root directory; give a destination directory ending in /"));
                }
                plan.push(Planned {
                    dest: target,
                    meta: meta_for(&md, false),
                    kind: PlanKind::File(abs.clone(), md.len()),
                });
            }
        }
        let _ = opts;
        // Cache key: the instruction and the content of every input.
        let mut h = Hasher::new();
        for p in &plan {
            h.update(
                format!(
                    "{}\0{:o}\0{}\0{}\0",
                    p.dest, p.meta.mode, p.meta.uid, p.meta.gid
                )
                .as_bytes(),
            );
            match &p.kind {
                PlanKind::Dir => h.update(b"d"),
                PlanKind::File(path, _) | PlanKind::Archive { path, .. } => {
                    // `A`: extracted by mvm_unpack's rules (layers that
                    // the earlier extractor cached under `a` are not
                    // reused).
                    h.update(if matches!(p.kind, PlanKind::Archive { .. }) {
                        b"A"
                    } else {
                        b"f"
                    });
                    hash_file(&mut h, path).map_err(|source| BuildError::Io {
                        op: "reading",
                        path: path.clone(),
                        source,
                    })?;
                }
                PlanKind::Bytes(b) => {
                    h.update(b"b");
                    h.update(&Digest::of(b).as_bytes()[..]);
                }
                PlanKind::Symlink(t) => {
                    h.update(b"l");
                    h.update(t.as_os_str().as_encoded_bytes());
                }
            }
            h.update(b"\n");
        }
        let content = h.finish();
        let kw = if add { "ADD" } else { "COPY" };
        let flags_shown: Vec<String> = c.flags.iter().map(|(k, v)| format!("--{k}={v}")).collect();
        let created_by = format!(
            "{kw} {}{} /{dest}",
            if flags_shown.is_empty() {
                String::new()
            } else {
                format!("{} ", flags_shown.join(" "))
            },
            shown_srcs.join(" ")
        );
        let key = st.key.child(&[kw, &created_by, &content.to_string()]);
        if !opts.no_cache && self.try_cache(st, &key, lease)? {
            return Ok(true);
        }
        let layer_path = lease.tmp_dir().join(format!("layer-{}.tar", &key.0[..16]));
        let t0 = Instant::now();
        let left_out = self
            .write_plan(&plan, &layer_path)
            .map_err(|e| info.err(e))?;
        for (name, devices) in left_out {
            self.emit(Event::Output {
                id: info.id,
                elapsed: secs(t0.elapsed()),
                line: format!(
                    "[warning]: {name}: {devices} device node(s) left out (a build does not create device nodes)"
                ),
            });
        }
        self.add_layer(st, lease, &layer_path, created_by, &key)?;
        Ok(false)
    }

    fn plan_dir(
        &self,
        src: &Source<'_>,
        abs: &Path,
        rel: &str,
        dest: &str,
        plan: &mut Vec<Planned>,
        meta_for: &dyn Fn(&fs::Metadata, bool) -> Meta,
    ) -> Result<()> {
        let mut names: Vec<_> = fs::read_dir(abs)
            .map_err(|source| BuildError::Io {
                op: "reading",
                path: abs.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for n in names {
            let name = n.to_string_lossy().into_owned();
            let child_rel = join(rel, &name);
            let child_abs = abs.join(&n);
            let excluded = src.ignore && src.ctx.ignore().excluded(&child_rel);
            let md = fs::symlink_metadata(&child_abs).map_err(|source| BuildError::Io {
                op: "reading",
                path: child_abs.clone(),
                source,
            })?;
            let target = join(dest, &name);
            if md.is_dir() {
                let start = plan.len();
                if !excluded {
                    plan.push(Planned {
                        dest: target.clone(),
                        meta: meta_for(&md, true),
                        kind: PlanKind::Dir,
                    });
                }
                if !excluded || src.ctx.ignore().may_include_below(&child_rel) {
                    self.plan_dir(src, &child_abs, &child_rel, &target, plan, meta_for)?;
                    if excluded && plan.len() > start {
                        // Something below was re-included: keep its parent.
                        plan.insert(
                            start,
                            Planned {
                                dest: target,
                                meta: meta_for(&md, true),
                                kind: PlanKind::Dir,
                            },
                        );
                    }
                }
                continue;
            }
            if excluded {
                continue;
            }
            let kind = if md.file_type().is_symlink() {
                PlanKind::Symlink(fs::read_link(&child_abs).map_err(|source| BuildError::Io {
                    op: "reading",
                    path: child_abs.clone(),
                    source,
                })?)
            } else if md.is_file() {
                PlanKind::File(child_abs.clone(), md.len())
            } else {
                // Sockets, FIFOs and devices in a context are skipped.
                continue;
            };
            plan.push(Planned {
                dest: target,
                meta: meta_for(&md, false),
                kind,
            });
        }
        Ok(())
    }

    /// Writes the layer; returns the archives that had device nodes left
    /// out, with how many.
    fn write_plan(&self, plan: &[Planned], out: &Path) -> io::Result<Vec<(String, u64)>> {
        let mut left_out = Vec::new();
        let mut w = LayerWriter::create(out)?;
        for p in plan {
            match &p.kind {
                PlanKind::Dir => w.dir(&p.dest, &p.meta, &[])?,
                PlanKind::File(path, size) => {
                    let f = File::open(path)?;
                    let actual = f.metadata()?.len();
                    if actual != *size {
                        return Err(io::Error::other(format!(
                            "{} changed while the build was reading it",
                            path.display()
                        )));
                    }
                    w.file(&p.dest, &p.meta, *size, f, &[])?
                }
                PlanKind::Bytes(b) => w.file(&p.dest, &p.meta, b.len() as u64, &b[..], &[])?,
                PlanKind::Symlink(t) => w.symlink(&p.dest, t, &p.meta)?,
                PlanKind::Archive { path, name, chown } => {
                    let owner = chown.then_some((p.meta.uid, p.meta.gid));
                    let stats = extract_archive(&mut w, path, &p.dest, owner)
                        .map_err(|e| io::Error::other(format!("archive {name}: {e}")))?;
                    if stats.skipped_devices > 0 {
                        left_out.push((name.clone(), stats.skipped_devices));
                    }
                }
            }
        }
        w.finish()?;
        Ok(left_out)
    }

    /// `uid[:gid]` or names looked up in the image's /etc/passwd and
    /// /etc/group.
    fn resolve_chown(&self, st: &State, spec: &str) -> Result<(u64, u64), String> {
        let (u, g) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let read = |path: &str| -> Result<String, String> {
            tarlayer::read_file_in_layers(&self.store, &st.layers, path, MAX_PASSWD)
                .map_err(|e| format!("reading {path} of the image: {e}"))
                .map(|o| {
                    o.map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default()
                })
        };
        let (uid, primary) = match u.parse::<u64>() {
            Ok(n) => (n, n),
            Err(_) => {
                let passwd = read("etc/passwd")?;
                passwd
                    .lines()
                    .map(|l| l.split(':').collect::<Vec<_>>())
                    .find(|f| f.len() >= 4 && f[0] == u)
                    .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                    .ok_or_else(|| {
                        format!("--chown: user {u:?} is not in the image's /etc/passwd")
                    })?
            }
        };
        let gid = match g {
            None => primary,
            Some(g) => match g.parse::<u64>() {
                Ok(n) => n,
                Err(_) => {
                    let group = read("etc/group")?;
                    group
                        .lines()
                        .map(|l| l.split(':').collect::<Vec<_>>())
                        .find(|f| f.len() >= 3 && f[0] == g)
                        .and_then(|f| f[2].parse().ok())
                        .ok_or_else(|| {
                            format!("--chown: group {g:?} is not in the image's /etc/group")
                        })?
                }
            },
        };
        Ok((uid, gid))
    }
}

#[derive(Debug, Default)]
struct Counter {
    steps: usize,
    cached: usize,
    runs: usize,
    boot: Duration,
    run: Duration,
    commit: Duration,
    used_args: BTreeSet<String>,
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{}/{b}", a.trim_end_matches('/'))
    }
}

fn hash_file(h: &mut Hasher, path: &Path) -> io::Result<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// `$NAME` and `${NAME}` only (heredoc bodies and JSON-form arguments:
/// quotes there are content, not syntax).
fn expand_vars(s: &str, vars: &Vars) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let braced = chars.peek() == Some(&'{');
        if braced {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&n) = chars.peek() {
            if n.is_ascii_alphanumeric() || n == '_' {
                name.push(n);
                chars.next();
            } else {
                break;
            }
        }
        if braced {
            if chars.peek() == Some(&'}') && !name.is_empty() {
                chars.next();
                out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
            } else {
                out.push_str("${");
                out.push_str(&name);
            }
        } else if name.is_empty() {
            out.push('$');
        } else {
            out.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
        }
    }
    out
}

/// Quotes argv for history lines the way a reader expects.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// True if `path` is a tar archive (plain, gzip or zstd).
fn is_archive(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let Ok((mut r, _)) = mvm_images::layer::decompress(f, None) else {
        return false;
    };
    let mut head = vec![0u8; 512];
    if r.read_exact(&mut head).is_err() {
        return false;
    }
    &head[257..262] == b"ustar"
}

/// How ADD reads a local archive: `mvm_unpack`'s layer rules (names
/// checked, hard links only to earlier files of the archive, nothing
/// beneath an earlier symlink or file, sizes bounded; modes, setuid bits
/// and xattrs kept, as Docker keeps them), except that Docker's ADD
/// applies no whiteouts (so a `.wh.` name is refused: in the layer it
/// would be one) and skips the archive's root entry (the destination
/// keeps its mode). Device nodes are left out.
fn add_archive_options() -> mvm_unpack::Options {
    mvm_unpack::Options {
        whiteouts: false,
        existing: mvm_unpack::Existing::Merge,
        ..mvm_unpack::Options::layer()
    }
}

/// ADD of a local archive (plain, gzip or zstd): its entries, checked and
/// re-serialised by `mvm_unpack` under [`add_archive_options`], beneath
/// `dest` in the layer, owned by `owner` (`--chown`) or else as in the
/// archive. An archive it refuses fails the step, naming the entry.
fn extract_archive(
    w: &mut LayerWriter,
    path: &Path,
    dest: &str,
    owner: Option<(u64, u64)>,
) -> io::Result<mvm_unpack::Stats> {
    let (r, _) = mvm_images::layer::decompress(File::open(path)?, None)?;
    let placement = mvm_unpack::Placement {
        beneath: dest.as_bytes().to_vec(),
        owner,
    };
    let mut stats = mvm_unpack::Stats::default();
    w.append_raw(|out| {
        mvm_unpack::sanitize_into_layer(r, out, &placement, &add_archive_options(), &mut stats)
            .map(drop)
    })
    .map_err(io::Error::other)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn var_expansion_without_quote_processing() {
        let v: Vars = [("A".to_string(), "1".to_string())].into_iter().collect();
        assert_eq!(expand_vars("'$A' ${A} $B $ ${", &v), "'1' 1  $ ${");
    }

    #[test]
    fn history_quoting() {
        assert_eq!(
            shell_words(&["/bin/sh".into(), "-c".into(), "echo 'a b'".into()]),
            "/bin/sh -c 'echo '\\''a b'\\'''"
        );
    }
}
