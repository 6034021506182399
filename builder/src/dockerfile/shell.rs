//! Docker's word processing for instruction arguments: quotes, the escape
//! character, and variable substitution (`$VAR`, `${VAR}`, `${VAR:-x}`,
//! `${VAR:+x}`, `${VAR-x}`, `${VAR+x}`).
//!
//! Docker applies this to ADD, COPY, ENV, EXPOSE, FROM, LABEL, STOPSIGNAL,
//! USER, VOLUME, WORKDIR and ARG, but not to RUN, CMD and ENTRYPOINT,
//! whose shell does its own expansion. The rules follow BuildKit's
//! `shell.Lex`: single quotes are literal, double quotes allow `$` and the
//! escape character, the escape character outside quotes takes the next
//! character literally, and an unset variable expands to nothing.

use std::collections::HashMap;

/// Why a word could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellError {
    /// A quote was opened and never closed.
    #[error("unterminated {0} quote")]
    Unterminated(&'static str),
    /// `${` without its `}`.
    #[error("missing '}}' in a ${{...}} substitution")]
    MissingBrace,
    /// `${VAR?message}` or `${VAR:?message}` with VAR unset.
    #[error("{name}: {message}")]
    Required {
        /// The variable.
        name: String,
        /// The message given.
        message: String,
    },
    /// `${` followed by something that is not a name.
    #[error("bad substitution: {0}")]
    BadSubstitution(String),
}

/// The variables substitution sees: build args in scope overlaid by ENV.
pub type Vars = HashMap<String, String>;

/// Processes one word: removes quotes, applies escapes, substitutes.
pub fn process_word(word: &str, vars: &Vars, escape: char) -> Result<String, ShellError> {
    let mut words = Lexer::new(word, vars, escape).run(false)?;
    Ok(words.pop().unwrap_or_default())
}

/// Processes a string into words split on unquoted whitespace (used for
/// COPY sources, EXPOSE, VOLUME and the like). Whitespace produced by a
/// substitution does not split words, as in BuildKit.
pub fn process_words(s: &str, vars: &Vars, escape: char) -> Result<Vec<String>, ShellError> {
    Lexer::new(s, vars, escape).run(true)
}

/// Splits `s` into raw words on unquoted whitespace, keeping quotes and
/// escapes in place (for `KEY=value` lists that are processed per word).
pub fn split_raw(s: &str, escape: char) -> Result<Vec<String>, ShellError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c == escape => {
                cur.push(c);
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '\'' | '"' => {
                cur.push(c);
                in_word = true;
                let mut closed = false;
                while let Some(n) = chars.next() {
                    cur.push(n);
                    if c == '"' && n == escape {
                        if let Some(m) = chars.next() {
                            cur.push(m);
                        }
                        continue;
                    }
                    if n == c {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(ShellError::Unterminated(if c == '"' {
                        "double"
                    } else {
                        "single"
                    }));
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    vars: &'a Vars,
    escape: char,
}

impl<'a> Lexer<'a> {
    fn new(s: &str, vars: &'a Vars, escape: char) -> Self {
        Lexer {
            chars: s.chars().collect(),
            pos: 0,
            vars,
            escape,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn run(mut self, split: bool) -> Result<Vec<String>, ShellError> {
        let mut words = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        while let Some(c) = self.next() {
            match c {
                c if split && c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                '\'' => {
                    in_word = true;
                    loop {
                        match self.next() {
                            Some('\'') => break,
                            Some(n) => cur.push(n),
                            None => return Err(ShellError::Unterminated("single")),
                        }
                    }
                }
                '"' => {
                    in_word = true;
                    loop {
                        match self.next() {
                            Some('"') => break,
                            Some('$') => cur.push_str(&self.dollar()?),
                            Some(n) if n == self.escape => match self.next() {
                                // Inside double quotes the escape only
                                // protects `"`, `$`, itself and a newline.
                                Some(m) if m == '"' || m == '$' || m == self.escape => cur.push(m),
                                Some('\n') => {}
                                Some(m) => {
                                    cur.push(n);
                                    cur.push(m);
                                }
                                None => return Err(ShellError::Unterminated("double")),
                            },
                            Some(n) => cur.push(n),
                            None => return Err(ShellError::Unterminated("double")),
                        }
                    }
                }
                '$' => {
                    in_word = true;
                    cur.push_str(&self.dollar()?);
                }
                c if c == self.escape => {
                    in_word = true;
                    match self.next() {
                        Some(n) => cur.push(n),
                        None => cur.push(c),
                    }
                }
                c => {
                    in_word = true;
                    cur.push(c);
                }
            }
        }
        if in_word || !split {
            words.push(cur);
        }
        Ok(words)
    }

    fn name(&mut self) -> String {
        let mut n = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                n.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        n
    }

    /// After a `$`: the substitution's value.
    fn dollar(&mut self) -> Result<String, ShellError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced()
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let n = self.name();
                Ok(self.vars.get(&n).cloned().unwrap_or_default())
            }
            Some(c) if c.is_ascii_digit() => {
                // Positional parameters do not exist here: empty.
                self.pos += 1;
                Ok(String::new())
            }
            _ => Ok("$".to_string()),
        }
    }

    fn braced(&mut self) -> Result<String, ShellError> {
        let name = self.name();
        if name.is_empty() {
            return Err(ShellError::BadSubstitution(format!(
                "${{{}",
                self.chars[self.pos..].iter().take(20).collect::<String>()
            )));
        }
        let value = self.vars.get(&name);
        match self.next() {
            Some('}') => Ok(value.cloned().unwrap_or_default()),
            Some(c) => {
                let colon = c == ':';
                let op = if colon { self.next() } else { Some(c) };
                let op = op.ok_or(ShellError::MissingBrace)?;
                if !matches!(op, '-' | '+' | '?') {
                    return Err(ShellError::BadSubstitution(format!("${{{name}{c}{op}")));
                }
                let word = self.word_until_brace()?;
                // With ':', an empty value counts as unset.
                let set = match value {
                    Some(v) => !(colon && v.is_empty()),
                    None => false,
                };
                match op {
                    '-' => Ok(if set {
                        value.cloned().unwrap_or_default()
                    } else {
                        word
                    }),
                    '+' => Ok(if set { word } else { String::new() }),
                    _ => {
                        if set {
                            Ok(value.cloned().unwrap_or_default())
                        } else {
                            Err(ShellError::Required {
                                name,
                                message: if word.is_empty() {
                                    "is not set".into()
                                } else {
                                    word
                                },
                            })
                        }
                    }
                }
            }
            None => Err(ShellError::MissingBrace),
        }
    }

    /// The word of `${VAR:-word}`, itself processed, up to the closing `}`.
    fn word_until_brace(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        loop {
            match self.next() {
                Some('}') => return Ok(out),
                Some('$') => out.push_str(&self.dollar()?),
                Some('\'') => loop {
                    match self.next() {
                        Some('\'') => break,
                        Some(n) => out.push(n),
                        None => return Err(ShellError::Unterminated("single")),
                    }
                },
                Some('"') => loop {
                    match self.next() {
                        Some('"') => break,
                        Some('$') => out.push_str(&self.dollar()?),
                        Some(n) => out.push(n),
                        None => return Err(ShellError::Unterminated("double")),
                    }
                },
                Some(c) if c == self.escape => {
                    if let Some(n) = self.next() {
                        out.push(n);
                    }
                }
                Some(c) => out.push(c),
                None => return Err(ShellError::MissingBrace),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [("A", "1"), ("EMPTY", ""), ("SP", "a b")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn w(s: &str) -> String {
        process_word(s, &vars(), '\\').unwrap()
    }

    #[test]
    fn substitution_forms() {
        assert_eq!(w("$A"), "1");
        assert_eq!(w("${A}x"), "1x");
        assert_eq!(w("$Ax"), "", "name runs to the end of the identifier");
        assert_eq!(w("$UNSET"), "");
        assert_eq!(w("${UNSET:-def}"), "def");
        assert_eq!(w("${EMPTY:-def}"), "def");
        assert_eq!(w("${EMPTY-def}"), "");
        assert_eq!(w("${A:-def}"), "1");
        assert_eq!(w("${A:+alt}"), "alt");
        assert_eq!(w("${UNSET:+alt}"), "");
        assert_eq!(w("${EMPTY+alt}"), "alt");
        assert_eq!(w("${UNSET:-$A$A}"), "11", "nested substitution");
        assert_eq!(w("cost $"), "cost $");
        let e = process_word("${UNSET:?needed}", &vars(), '\\').unwrap_err();
        assert_eq!(e.to_string(), "UNSET: needed");
        assert!(matches!(
            process_word("${A", &vars(), '\\'),
            Err(ShellError::MissingBrace)
        ));
        assert!(process_word("${}", &vars(), '\\').is_err());
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(w("'$A'"), "$A");
        assert_eq!(w("\"$A b\""), "1 b");
        assert_eq!(w("\\$A"), "$A");
        assert_eq!(w("\"a\\\"b\""), "a\"b");
        assert_eq!(w("\"a\\nb\""), "a\\nb");
        assert_eq!(process_word("`$A", &vars(), '`').unwrap(), "$A");
        assert_eq!(
            process_word("C:\\dir", &vars(), '`').unwrap(),
            "C:\\dir",
            "backslash is literal with escape=`"
        );
        assert!(matches!(
            process_word("'open", &vars(), '\\'),
            Err(ShellError::Unterminated("single"))
        ));
    }

    #[test]
    fn word_splitting() {
        let v = process_words("a \"b c\" $SP  'd'", &vars(), '\\').unwrap();
        assert_eq!(v, ["a", "b c", "a b", "d"]);
        assert_eq!(
            split_raw("k=\"a b\" x='y z' plain", '\\').unwrap(),
            ["k=\"a b\"", "x='y z'", "plain"]
        );
        assert!(split_raw("k=\"a", '\\').is_err());
    }
}
