//! The Dockerfile parser: parser directives, comments, line
//! continuations, heredocs, JSON and shell forms, and every instruction,
//! each with the line it starts on so errors can name `file:line`.
//!
//! Parsing is syntactic. Variable substitution needs the values of ENV and
//! ARG at that point of the build, so it happens in the engine (with
//! [`shell`]); the parser keeps the raw words.

pub mod shell;

use std::fmt;

/// A parse error, naming the file and line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ParseError {
    /// The Dockerfile's name as the user gave it.
    pub file: String,
    /// 1-based line of the instruction (or of the problem).
    pub line: usize,
    /// What is wrong and what to do.
    pub message: String,
}

/// A command in JSON (exec) or shell form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `["executable", "arg"]`: run as is.
    Exec(Vec<String>),
    /// `command line`: run through the SHELL.
    Shell(String),
}

/// A heredoc attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word (`EOF`), also the file name for COPY.
    pub name: String,
    /// The body, each line ending in a newline.
    pub content: String,
    /// False if the delimiter was quoted (no expansion of the body).
    pub expand: bool,
}

/// `--name=value` flags of an instruction.
pub type Flags = Vec<(String, String)>;

/// The arguments of COPY and ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyArgs {
    /// `--from`, `--chown`, `--chmod`, `--link`, ... (raw).
    pub flags: Flags,
    /// Raw sources then the destination (JSON form already unquoted).
    pub args: Vec<String>,
    /// True if the arguments came in JSON form (no word processing).
    pub json: bool,
    /// Heredoc sources.
    pub heredocs: Vec<Heredoc>,
}

/// HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    /// `HEALTHCHECK [flags] CMD ...`.
    Cmd {
        /// `--interval` and friends (raw).
        flags: Flags,
        /// The check command.
        command: Command,
    },
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `FROM [--platform=P] image [AS name]` (raw words).
    From {
        /// The image (raw, substituted with global ARGs).
        image: String,
        /// The stage name.
        name: Option<String>,
        /// `--platform`, if given.
        platform: Option<String>,
    },
    /// `RUN [flags] command`.
    Run {
        /// `--mount`, `--network`, ... (raw).
        flags: Flags,
        /// The command.
        command: Command,
        /// Heredocs: with a shell form whose whole command is one
        /// heredoc, the heredoc is the script.
        heredocs: Vec<Heredoc>,
    },
    /// `CMD`.
    Cmd(Command),
    /// `ENTRYPOINT`.
    Entrypoint(Command),
    /// `SHELL ["sh", "-c"]`.
    Shell(Vec<String>),
    /// `ENV k=v ...` (raw key, raw value).
    Env(Vec<(String, String)>),
    /// `ARG name[=default] ...` (raw).
    Arg(Vec<(String, Option<String>)>),
    /// `LABEL k=v ...` (raw).
    Label(Vec<(String, String)>),
    /// `EXPOSE 80/tcp ...` (raw string).
    Expose(String),
    /// `VOLUME` (JSON list, or raw string).
    Volume(Result<Vec<String>, String>),
    /// `USER` (raw).
    User(String),
    /// `WORKDIR` (raw).
    Workdir(String),
    /// `COPY`.
    Copy(CopyArgs),
    /// `ADD`.
    Add(CopyArgs),
    /// `STOPSIGNAL` (raw).
    StopSignal(String),
    /// `HEALTHCHECK`.
    Healthcheck(Healthcheck),
    /// `ONBUILD <instruction>`: the trigger's source text.
    Onbuild(String),
    /// `MAINTAINER` (deprecated; sets the author).
    Maintainer(String),
}

/// An instruction with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// 1-based line where it starts.
    pub line: usize,
    /// The instruction's text as written (continuations joined), for
    /// progress output and history.
    pub text: String,
    /// What it is.
    pub kind: Kind,
}

impl Instruction {
    /// The keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match &self.kind {
            Kind::From { .. } => "FROM",
            Kind::Run { .. } => "RUN",
            Kind::Cmd(_) => "CMD",
            Kind::Entrypoint(_) => "ENTRYPOINT",
            Kind::Shell(_) => "SHELL",
            Kind::Env(_) => "ENV",
            Kind::Arg(_) => "ARG",
            Kind::Label(_) => "LABEL",
            Kind::Expose(_) => "EXPOSE",
            Kind::Volume(_) => "VOLUME",
            Kind::User(_) => "USER",
            Kind::Workdir(_) => "WORKDIR",
            Kind::Copy(_) => "COPY",
            Kind::Add(_) => "ADD",
            Kind::StopSignal(_) => "STOPSIGNAL",
            Kind::Healthcheck(_) => "HEALTHCHECK",
            Kind::Onbuild(_) => "ONBUILD",
            Kind::Maintainer(_) => "MAINTAINER",
        }
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The name used in errors.
    pub file: String,
    /// The escape character (`\` or `` ` ``).
    pub escape: char,
    /// The `syntax` directive, if any (accepted and recorded; the
    /// builder always uses its own frontend).
    pub syntax: Option<String>,
    /// Instructions in order (ARGs before the first FROM included).
    pub instructions: Vec<Instruction>,
}

/// Parses `text`, naming it `file` in errors.
pub fn parse(file: &str, text: &str) -> Result<Dockerfile, ParseError> {
    Parser::new(file, text).parse()
}

/// Parses one instruction (an ONBUILD trigger) with a given escape.
pub fn parse_line(
    file: &str,
    line: usize,
    text: &str,
    escape: char,
) -> Result<Instruction, ParseError> {
    let mut p = Parser::new(file, text);
    p.escape = escape;
    p.line_offset = line.saturating_sub(1);
    let df = p.parse_body()?;
    df.into_iter().next().ok_or_else(|| ParseError {
        file: file.to_string(),
        line,
        message: "empty ONBUILD trigger".into(),
    })
}

struct Parser<'a> {
    file: &'a str,
    lines: Vec<&'a str>,
    idx: usize,
    escape: char,
    syntax: Option<String>,
    line_offset: usize,
}

const MAX_HEREDOC: usize = 16 << 20;

impl<'a> Parser<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        Parser {
            file,
            lines: text.split('\n').collect(),
            idx: 0,
            escape: '\\',
            syntax: None,
            line_offset: 0,
        }
    }

    fn err(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_string(),
            line: line + self.line_offset,
            message: message.into(),
        }
    }

    fn parse(mut self) -> Result<Dockerfile, ParseError> {
        self.directives()?;
        let instructions = self.parse_body()?;
        if instructions.is_empty() {
            return Err(self.err(1, "the Dockerfile has no instructions"));
        }
        if let Some(i) = instructions
            .iter()
            .find(|i| !matches!(i.kind, Kind::Arg(_) | Kind::From { .. }))
        {
            if !instructions
                .iter()
                .take_while(|x| x.line <= i.line)
                .any(|x| matches!(x.kind, Kind::From { .. }))
            {
                return Err(self.err(
                    i.line,
                    format!(
                        "{} before the first FROM: a Dockerfile must start with FROM (only ARG may come before it)",
                        i.keyword()
                    ),
                ));
            }
        }
        if !instructions
            .iter()
            .any(|i| matches!(i.kind, Kind::From { .. }))
        {
            return Err(self.err(
                1,
                "no FROM instruction: a build needs a base (use FROM scratch for an empty one)",
            ));
        }
        Ok(Dockerfile {
            file: self.file.to_string(),
            escape: self.escape,
            syntax: self.syntax,
            instructions,
        })
    }

    /// Parser directives: `# key=value` lines at the very top.
    fn directives(&mut self) -> Result<(), ParseError> {
        let mut seen = Vec::new();
        while self.idx < self.lines.len() {
            let l = self.lines[self.idx].trim_end_matches('\r');
            let Some(rest) = l.trim_start().strip_prefix('#') else {
                break;
            };
            let Some((k, v)) = rest.split_once('=') else {
                break;
            };
            let key = k.trim().to_ascii_lowercase();
            if key.is_empty() || key.contains(char::is_whitespace) {
                break;
            }
            let value = v.trim();
            match key.as_str() {
                "escape" | "syntax" | "check" => {}
                // Unknown directives are comments, as in Docker.
                _ => break,
            }
            if seen.contains(&key) {
                return Err(self.err(
                    self.idx + 1,
                    format!("parser directive {key:?} given twice"),
                ));
            }
            seen.push(key.clone());
            match key.as_str() {
                "escape" => {
                    self.escape = match value {
                        "\\" => '\\',
                        "`" => '`',
                        _ => {
                            return Err(self.err(
                                self.idx + 1,
                                format!("invalid escape directive {value:?}: use \\ or `"),
                            ))
                        }
                    }
                }
                "syntax" => self.syntax = Some(value.to_string()),
                _ => {}
            }
            self.idx += 1;
        }
        Ok(())
    }

    fn parse_body(&mut self) -> Result<Vec<Instruction>, ParseError> {
        let mut out = Vec::new();
        while let Some((line, text)) = self.logical_line()? {
            out.push(self.instruction(line, text)?);
        }
        Ok(out)
    }

    /// The next instruction's text with continuations joined; comment and
    /// empty lines inside a continuation are dropped, as Docker does.
    fn logical_line(&mut self) -> Result<Option<(usize, String)>, ParseError> {
        let mut text = String::new();
        let mut start = None;
        while self.idx < self.lines.len() {
            let raw = self.lines[self.idx].trim_end_matches('\r');
            self.idx += 1;
            let trimmed = raw.trim_start();
            if trimmed.starts_with('#') {
                continue;
            }
            if trimmed.trim_end().is_empty() {
                if start.is_none() {
                    continue;
                }
                // An empty line inside a continuation is skipped.
                continue;
            }
            if start.is_none() {
                start = Some(self.idx - 1);
            }
            let body = raw.trim_end();
            if let Some(stripped) = body.strip_suffix(self.escape) {
                text.push_str(stripped);
                continue;
            }
            text.push_str(if start == Some(self.idx - 1) {
                trimmed.trim_end()
            } else {
                body
            });
            return Ok(Some((start.unwrap_or(0) + 1, text)));
        }
        match start {
            Some(s) => Ok(Some((s + 1, text))),
            None => Ok(None),
        }
    }

    fn instruction(&mut self, line: usize, text: String) -> Result<Instruction, ParseError> {
        let text = text.trim().to_string();
        let (kw, rest) = match text.find(char::is_whitespace) {
            Some(i) => (&text[..i], text[i..].trim_start()),
            None => (text.as_str(), ""),
        };
        let kw_up = kw.to_ascii_uppercase();
        let need_args = |p: &Self| -> Result<(), ParseError> {
            if rest.is_empty() {
                Err(p.err(line, format!("{kw_up} requires at least one argument")))
            } else {
                Ok(())
            }
        };
        let kind = match kw_up.as_str() {
            "FROM" => {
                need_args(self)?;
                let (flags, rest) = self.flags(line, rest)?;
                let mut platform = None;
                for (k, v) in flags {
                    match k.as_str() {
                        "platform" => platform = Some(v),
                        _ => return Err(self.err(line, format!("unknown flag --{k} for FROM"))),
                    }
                }
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    [image] => Kind::From {
                        image: image.to_string(),
                        name: None,
                        platform,
                    },
                    [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                        let valid = name
                            .chars()
                            .next()
                            .is_some_and(|c| c.is_ascii_alphabetic())
                            && name
                                .chars()
                                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                        if !valid {
                            return Err(self.err(line, format!("invalid stage name {name:?}: use letters, digits, '_', '.', '-', starting with a letter")));
                        }
                        Kind::From {
                            image: image.to_string(),
                            name: Some(name.to_ascii_lowercase()),
                            platform,
                        }
                    }
                    _ => {
                        return Err(self.err(
                            line,
                            "FROM takes an image and optionally AS <name>: FROM image[:tag] [AS name]",
                        ))
                    }
                }
            }
            "RUN" => {
                need_args(self)?;
                let (flags, rest) = self.flags(line, rest)?;
                for (k, _) in &flags {
                    if !matches!(k.as_str(), "mount" | "network" | "security") {
                        return Err(self.err(line, format!("unknown flag --{k} for RUN")));
                    }
                }
                let heredocs = self.heredocs(line, rest)?;
                Kind::Run {
                    flags,
                    command: self.command(rest),
                    heredocs,
                }
            }
            "CMD" => {
                need_args(self)?;
                Kind::Cmd(self.command(rest))
            }
            "ENTRYPOINT" => {
                need_args(self)?;
                Kind::Entrypoint(self.command(rest))
            }
            "SHELL" => match json_array(rest) {
                Some(v) if !v.is_empty() => Kind::Shell(v),
                _ => {
                    return Err(self.err(
                        line,
                        "SHELL requires the JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]",
                    ))
                }
            },
            "ENV" => {
                need_args(self)?;
                Kind::Env(self.key_values(line, "ENV", rest, true)?)
            }
            "LABEL" => {
                need_args(self)?;
                Kind::Label(self.key_values(line, "LABEL", rest, false)?)
            }
            "ARG" => {
                need_args(self)?;
                let words = shell::split_raw(rest, self.escape)
                    .map_err(|e| self.err(line, format!("ARG: {e}")))?;
                let mut args = Vec::new();
                for w in words {
                    let (k, v) = match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w.clone(), None),
                    };
                    if !valid_name(&k) {
                        return Err(self.err(line, format!("ARG: invalid name {k:?}")));
                    }
                    args.push((k, v));
                }
                Kind::Arg(args)
            }
            "EXPOSE" => {
                need_args(self)?;
                Kind::Expose(rest.to_string())
            }
            "VOLUME" => {
                need_args(self)?;
                if rest.starts_with('[') {
                    match json_array(rest) {
                        Some(v) => Kind::Volume(Ok(v)),
                        None => Kind::Volume(Err(rest.to_string())),
                    }
                } else {
                    Kind::Volume(Err(rest.to_string()))
                }
            }
            "USER" => {
                need_args(self)?;
                Kind::User(rest.to_string())
            }
            "WORKDIR" => {
                need_args(self)?;
                Kind::Workdir(rest.to_string())
            }
            "COPY" | "ADD" => {
                need_args(self)?;
                let (flags, rest) = self.flags(line, rest)?;
                let allowed: &[&str] = if kw_up == "COPY" {
                    &["from", "chown", "chmod", "link", "parents", "exclude"]
                } else {
                    &["chown", "chmod", "link", "checksum", "keep-git-dir", "exclude"]
                };
                if let Some((k, _)) = flags.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
                    return Err(self.err(line, format!("unknown flag --{k} for {kw_up}")));
                }
                let heredocs = self.heredocs(line, rest)?;
                let (args, json) = match json_array(rest) {
                    Some(v) => (v, true),
                    None => (
                        shell::split_raw(rest, self.escape)
                            .map_err(|e| self.err(line, format!("{kw_up}: {e}")))?,
                        false,
                    ),
                };
                if args.len() < 2 {
                    return Err(self.err(
                        line,
                        format!("{kw_up} requires at least one source and a destination"),
                    ));
                }
                let a = CopyArgs {
                    flags,
                    args,
                    json,
                    heredocs,
                };
                if kw_up == "COPY" {
                    Kind::Copy(a)
                } else {
                    Kind::Add(a)
                }
            }
            "STOPSIGNAL" => {
                need_args(self)?;
                Kind::StopSignal(rest.to_string())
            }
            "HEALTHCHECK" => {
                need_args(self)?;
                let (flags, rest) = self.flags(line, rest)?;
                if rest.eq_ignore_ascii_case("none") {
                    if !flags.is_empty() {
                        return Err(self.err(line, "HEALTHCHECK NONE takes no flags"));
                    }
                    Kind::Healthcheck(Healthcheck::None)
                } else {
                    let (kw2, cmd) = match rest.find(char::is_whitespace) {
                        Some(i) => (&rest[..i], rest[i..].trim_start()),
                        None => (rest, ""),
                    };
                    if !kw2.eq_ignore_ascii_case("cmd") || cmd.is_empty() {
                        return Err(self.err(
                            line,
                            "HEALTHCHECK takes NONE or [flags] CMD command",
                        ));
                    }
                    for (k, v) in &flags {
                        match k.as_str() {
                            "interval" | "timeout" | "start-period" | "start-interval" => {
                                parse_duration(v).map_err(|m| {
                                    self.err(line, format!("HEALTHCHECK --{k}: {m}"))
                                })?;
                            }
                            "retries" => {
                                v.parse::<u32>().map_err(|_| {
                                    self.err(line, format!("HEALTHCHECK --retries: {v:?} is not a number"))
                                })?;
                            }
                            _ => {
                                return Err(self.err(line, format!("unknown flag --{k} for HEALTHCHECK")))
                            }
                        }
                    }
                    Kind::Healthcheck(Healthcheck::Cmd {
                        flags,
                        command: self.command(cmd),
                    })
                }
            }
            "ONBUILD" => {
                need_args(self)?;
                let inner = rest.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
                if matches!(inner.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(self.err(line, format!("{inner} is not allowed as an ONBUILD trigger")));
                }
                // Check the trigger parses now, so errors point here.
                parse_line(self.file, line, rest, self.escape)?;
                Kind::Onbuild(rest.to_string())
            }
            "MAINTAINER" => {
                need_args(self)?;
                Kind::Maintainer(rest.to_string())
            }
            "" => return Err(self.err(line, "empty instruction")),
            other => {
                return Err(self.err(
                    line,
                    format!("unknown instruction {other}: check the spelling (instructions are FROM, RUN, CMD, LABEL, EXPOSE, ENV, ADD, COPY, ENTRYPOINT, VOLUME, USER, WORKDIR, ARG, ONBUILD, STOPSIGNAL, HEALTHCHECK, SHELL)"),
                ))
            }
        };
        Ok(Instruction { line, text, kind })
    }

    fn command(&self, rest: &str) -> Command {
        match json_array(rest) {
            Some(v) => Command::Exec(v),
            None => Command::Shell(rest.to_string()),
        }
    }

    /// Leading `--name=value` flags.
    fn flags<'s>(&self, line: usize, mut rest: &'s str) -> Result<(Flags, &'s str), ParseError> {
        let mut flags = Vec::new();
        while let Some(f) = rest.strip_prefix("--") {
            let end = f.find(char::is_whitespace).unwrap_or(f.len());
            let word = &f[..end];
            let (k, v) = match word.split_once('=') {
                Some((k, v)) => (k, v),
                // Boolean flags (`--link`).
                None => (word, "true"),
            };
            if k.is_empty() {
                return Err(self.err(line, format!("malformed flag --{word}")));
            }
            flags.push((k.to_ascii_lowercase(), v.to_string()));
            rest = f[end..].trim_start();
        }
        Ok((flags, rest))
    }

    /// `KEY=value` pairs (and the legacy `KEY value` form for ENV/LABEL).
    fn key_values(
        &self,
        line: usize,
        what: &str,
        rest: &str,
        env: bool,
    ) -> Result<Vec<(String, String)>, ParseError> {
        let words = shell::split_raw(rest, self.escape)
            .map_err(|e| self.err(line, format!("{what}: {e}")))?;
        if !words.is_empty() && !words[0].contains('=') {
            // Legacy form: the first word is the key, the rest the value.
            let key = words[0].clone();
            let value = rest[rest.find(&key).unwrap_or(0) + key.len()..].trim();
            if value.is_empty() {
                return Err(self.err(
                    line,
                    format!("{what} {key} has no value: use {what} {key}=value"),
                ));
            }
            if env && !valid_name(&key) {
                return Err(self.err(line, format!("{what}: invalid variable name {key:?}")));
            }
            return Ok(vec![(key, value.to_string())]);
        }
        let mut out = Vec::new();
        for w in words {
            let Some((k, v)) = w.split_once('=') else {
                return Err(self.err(
                    line,
                    format!("{what}: {w:?} is not KEY=value (mixing forms is not allowed)"),
                ));
            };
            if k.is_empty() {
                return Err(self.err(line, format!("{what}: empty key in {w:?}")));
            }
            out.push((k.to_string(), v.to_string()));
        }
        Ok(out)
    }

    /// Reads the bodies of the heredocs `rest` opens, from the next lines.
    fn heredocs(&mut self, line: usize, rest: &str) -> Result<Vec<Heredoc>, ParseError> {
        let mut out = Vec::new();
        let mut s = rest;
        while let Some(i) = s.find("<<") {
            let after = &s[i + 2..];
            // `<<<` is a here-string, not a heredoc.
            if let Some(rest) = after.strip_prefix('<') {
                s = rest;
                continue;
            }
            let (strip_tabs, after) = match after.strip_prefix('-') {
                Some(a) => (true, a),
                None => (false, after),
            };
            let (quoted, after) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => (Some(q), &after[1..]),
                _ => (None, after),
            };
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-'))
                .unwrap_or(after.len());
            let name = &after[..end];
            let mut next = &after[end..];
            if let Some(q) = quoted {
                match next.strip_prefix(q) {
                    Some(n) => next = n,
                    None => return Err(self.err(line, "unterminated quote in a heredoc delimiter")),
                }
            }
            s = next;
            if name.is_empty() {
                continue;
            }
            let mut content = String::new();
            let mut closed = false;
            while self.idx < self.lines.len() {
                let l = self.lines[self.idx].trim_end_matches('\r');
                self.idx += 1;
                let l = if strip_tabs {
                    l.trim_start_matches('\t')
                } else {
                    l
                };
                if l == name {
                    closed = true;
                    break;
                }
                content.push_str(l);
                content.push('\n');
                if content.len() > MAX_HEREDOC {
                    return Err(self.err(line, format!("heredoc {name} is larger than 16 MiB")));
                }
            }
            if !closed {
                return Err(self.err(
                    line,
                    format!(
                        "heredoc <<{name} is not terminated: add a line containing only {name}"
                    ),
                ));
            }
            out.push(Heredoc {
                name: name.to_string(),
                content,
                expand: quoted.is_none(),
            });
        }
        Ok(out)
    }
}

/// True for a valid variable name.
pub fn valid_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The JSON form: an array of strings, or None (then it is shell form, as
/// Docker falls back for anything that does not parse).
fn json_array(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

/// A Go-style duration (`30s`, `1m30s`, `500ms`) in nanoseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let mut total: u128 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(0);
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?} has a number without a unit (use s, ms, m, h)"))?;
        let n: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult: f64 = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            u => {
                return Err(format!(
                    "{s:?} has an unknown unit {u:?} (use ns, us, ms, s, m, h)"
                ))
            }
        };
        rest = &rest[unit_end..];
        total += (n * mult) as u128;
    }
    u64::try_from(total).map_err(|_| format!("{s:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Dockerfile {
        parse("Dockerfile", s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn perr(s: &str) -> String {
        parse("ctx/Dockerfile", s).unwrap_err().to_string()
    }

    #[test]
    fn comments_continuations_and_lines() {
        let df = p("# a comment\n\nARG V=1\nFROM busybox:$V AS Build\n\
                    RUN echo a \\\n  # inside\n\n  && echo b\nCMD [\"sh\", \"-c\", \"x\"]\n");
        assert_eq!(df.instructions.len(), 4);
        assert_eq!(df.instructions[0].line, 3);
        assert_eq!(
            df.instructions[1].kind,
            Kind::From {
                image: "busybox:$V".into(),
                name: Some("build".into()),
                platform: None
            }
        );
        let run = &df.instructions[2];
        assert_eq!(run.line, 5);
        assert_eq!(
            run.kind,
            Kind::Run {
                flags: vec![],
                command: Command::Shell("echo a   && echo b".into()),
                heredocs: vec![]
            }
        );
        assert_eq!(df.instructions[3].line, 9);
        assert_eq!(
            df.instructions[3].kind,
            Kind::Cmd(Command::Exec(vec!["sh".into(), "-c".into(), "x".into()]))
        );
    }

    #[test]
    fn directives() {
        let df = p("# syntax=docker/dockerfile:1\n# escape=`\nFROM scratch\nRUN a `\n b\n");
        assert_eq!(df.escape, '`');
        assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(
            df.instructions[1].kind,
            Kind::Run {
                flags: vec![],
                command: Command::Shell("a  b".into()),
                heredocs: vec![]
            }
        );
        // A directive after a comment is a comment.
        let df = p("# hello\n# escape=`\nFROM scratch\n");
        assert_eq!(df.escape, '\\');
        assert!(perr("# escape=x\nFROM scratch\n").starts_with("ctx/Dockerfile:1: invalid escape"));
    }

    #[test]
    fn heredocs() {
        let df = p("FROM scratch\nRUN <<EOF\necho one\necho $X\nEOF\nCOPY <<-\"A\" <<B /dst/\n\tliteral $X\n\tA\nb\nB\nLABEL x=y\n");
        let Kind::Run { heredocs, .. } = &df.instructions[1].kind else {
            panic!()
        };
        assert_eq!(heredocs[0].content, "echo one\necho $X\n");
        assert!(heredocs[0].expand);
        let Kind::Copy(c) = &df.instructions[2].kind else {
            panic!()
        };
        assert_eq!(c.heredocs.len(), 2);
        assert_eq!(c.heredocs[0].name, "A");
        assert_eq!(c.heredocs[0].content, "literal $X\n");
        assert!(!c.heredocs[0].expand);
        assert_eq!(c.heredocs[1].content, "b\n");
        assert_eq!(df.instructions[3].line, 11);
        assert_eq!(
            perr("FROM scratch\nRUN <<EOF\necho\n"),
            "ctx/Dockerfile:2: heredoc <<EOF is not terminated: add a line containing only EOF"
        );
    }

    #[test]
    fn every_instruction() {
        let df = p(r#"FROM --platform=linux/amd64 base
ENV A=1 B="two words"
ENV LEGACY value with spaces
LABEL "k"="v" x=y
EXPOSE 80 443/udp
VOLUME ["/data"]
VOLUME /a /b
USER 1000:1000
WORKDIR /app
COPY --from=build --chown=1:2 --chmod=644 a b /dst/
ADD ["x y", "/z"]
SHELL ["/bin/bash", "-c"]
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/
HEALTHCHECK NONE
ONBUILD RUN echo triggered
MAINTAINER me
ENTRYPOINT ["/bin/app"]
"#);
        let kinds: Vec<&str> = df.instructions.iter().map(|i| i.keyword()).collect();
        assert_eq!(
            kinds,
            [
                "FROM",
                "ENV",
                "ENV",
                "LABEL",
                "EXPOSE",
                "VOLUME",
                "VOLUME",
                "USER",
                "WORKDIR",
                "COPY",
                "ADD",
                "SHELL",
                "STOPSIGNAL",
                "HEALTHCHECK",
                "HEALTHCHECK",
                "ONBUILD",
                "MAINTAINER",
                "ENTRYPOINT"
            ]
        );
        assert!(
            matches!(&df.instructions[0].kind, Kind::From { platform: Some(p), .. } if p == "linux/amd64")
        );
        assert_eq!(
            df.instructions[1].kind,
            Kind::Env(vec![
                ("A".into(), "1".into()),
                ("B".into(), "\"two words\"".into())
            ])
        );
        assert_eq!(
            df.instructions[2].kind,
            Kind::Env(vec![("LEGACY".into(), "value with spaces".into())])
        );
        let Kind::Copy(c) = &df.instructions[9].kind else {
            panic!()
        };
        assert_eq!(c.flags[0], ("from".into(), "build".into()));
        assert_eq!(c.args, ["a", "b", "/dst/"]);
        let Kind::Add(a) = &df.instructions[10].kind else {
            panic!()
        };
        assert!(a.json);
        assert_eq!(a.args, ["x y", "/z"]);
        assert!(matches!(
            &df.instructions[13].kind,
            Kind::Healthcheck(Healthcheck::Cmd { command: Command::Shell(s), .. }) if s == "curl -f http://x/"
        ));
        assert_eq!(
            df.instructions[15].kind,
            Kind::Onbuild("RUN echo triggered".into())
        );
    }

    #[test]
    fn malformed_files_name_file_and_line() {
        assert_eq!(
            perr("FROM scratch\n\nFROB x\n")
                .split(": unknown")
                .next()
                .unwrap(),
            "ctx/Dockerfile:3"
        );
        assert_eq!(
            perr("FROM scratch\nCOPY onlyone\n"),
            "ctx/Dockerfile:2: COPY requires at least one source and a destination"
        );
        assert_eq!(
            perr("RUN echo\nFROM scratch\n"),
            "ctx/Dockerfile:1: RUN before the first FROM: a Dockerfile must start with FROM (only ARG may come before it)"
        );
        assert!(perr("FROM a b c d\n").starts_with("ctx/Dockerfile:1: FROM takes"));
        assert!(perr("FROM scratch\nENV\n").starts_with("ctx/Dockerfile:2: ENV requires"));
        assert!(perr("FROM scratch\nENV A\n").starts_with("ctx/Dockerfile:2: ENV A has no value"));
        assert!(
            perr("FROM scratch\nENV A=\"x\n").starts_with("ctx/Dockerfile:2: ENV: unterminated")
        );
        assert!(perr("FROM scratch\nSHELL sh -c\n")
            .starts_with("ctx/Dockerfile:2: SHELL requires the JSON form"));
        assert!(perr("FROM scratch\nHEALTHCHECK --interval=5x CMD true\n")
            .starts_with("ctx/Dockerfile:2: HEALTHCHECK --interval"));
        assert!(perr("FROM scratch\nONBUILD FROM x\n").starts_with("ctx/Dockerfile:2:"));
        assert!(perr("FROM scratch\nRUN --bogus=1 true\n").contains("unknown flag --bogus"));
        assert!(perr("\n# only comments\n")
            .starts_with("ctx/Dockerfile:1: the Dockerfile has no instructions"));
        assert!(perr("ARG X\n").contains("no FROM instruction"));
        assert!(perr("FROM scratch AS 1bad\n").contains("invalid stage name"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30_000_000_000));
        assert_eq!(parse_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
    }
}
