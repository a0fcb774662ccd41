//! Reading a Chef Backend node's `chef-backend.rb` and `chef-backend-secrets.json`, and mapping
//! them onto `larder.toml` and Larder's secrets (`larder import-chef-backend`).
//!
//! `chef-backend.rb` is Ruby, but in practice only a small literal subset of it: one setting
//! per statement, written `key 'value'`, `key('value')` or `key = value`, where the key may be
//! dotted (`postgresql.port`) or indexed (`postgresql['port']`), and the value is a string
//! (single or double quotes), an integer, a float, `true`/`false`/`nil`, a symbol, an array or a
//! hash of those. `#` starts a comment. Anything else (method calls, interpolation, variables)
//! is refused with the line it is on: guessing what a Ruby expression evaluates to would import
//! a wrong value silently.

use crate::config::{Config, ConfigError};
use crate::secrets::Secret;

/// A literal value of chef-backend.rb.
#[derive(Debug, Clone, PartialEq)]
pub enum RbValue {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Nil,
    Symbol(String),
    Array(Vec<RbValue>),
    Hash(Vec<(String, RbValue)>),
}

impl RbValue {
    fn type_name(&self) -> &'static str {
        match self {
            RbValue::Str(_) => "a string",
            RbValue::Int(_) => "an integer",
            RbValue::Float(_) => "a float",
            RbValue::Bool(_) => "a boolean",
            RbValue::Nil => "nil",
            RbValue::Symbol(_) => "a symbol",
            RbValue::Array(_) => "an array",
            RbValue::Hash(_) => "a hash",
        }
    }
}

/// One assignment: the dotted key (`postgresql.md5_auth_cidr_addresses`), its value and the
/// line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct RbSetting {
    pub key: String,
    pub value: RbValue,
    pub line: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ImportError {
    /// The file is not in the supported subset (or not well formed).
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: String,
        line: usize,
        message: String,
    },
    /// A setting Larder maps has a value it cannot use.
    #[error("{file}:{line}: `{key}`: {message}")]
    Value {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    /// The file as a whole (a required setting or secret is missing, the settings are not
    /// valid together).
    #[error("{file}: {message}")]
    File { file: String, message: String },
}

// ---------------------------------------------------------------------------------------------
// The parser.

struct Parser<'a> {
    chars: Vec<char>,
    i: usize,
    line: usize,
    file: &'a str,
}

type PResult<T> = Result<T, ImportError>;

/// Parse chef-backend.rb text. `file` names it in errors.
pub fn parse_rb(text: &str, file: &str) -> Result<Vec<RbSetting>, ImportError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        i: 0,
        line: 1,
        file,
    };
    let mut out = Vec::new();
    loop {
        p.skip_blank_lines();
        if p.peek().is_none() {
            break;
        }
        let line = p.line;
        let key = p.key()?;
        let spaced = p.skip_spaces();
        let value = match p.peek() {
            Some('=') if p.peek_at(1) != Some('=') => {
                p.bump();
                p.skip_spaces();
                p.value()?
            }
            Some('(') if !spaced => {
                p.bump();
                p.skip_blank();
                let v = p.value()?;
                p.skip_blank();
                if p.peek() != Some(')') {
                    return Err(p.err(format!("expected `)` to close `{key}(`")));
                }
                p.bump();
                v
            }
            None | Some('\n') | Some('#') | Some(';') => {
                return Err(p.err_at(line, format!("`{key}` has no value")))
            }
            Some(_) if spaced => p.value()?,
            Some(c) => return Err(p.err(format!("unexpected `{c}` after `{key}`"))),
        };
        p.skip_spaces();
        match p.peek() {
            None | Some('\n') | Some('#') | Some(';') => {}
            Some(c) => {
                return Err(p.err(format!(
                    "unexpected `{c}` after the value of `{key}` (one setting per line; only literal values are supported)"
                )))
            }
        }
        out.push(RbSetting { key, value, line });
    }
    Ok(out)
}

impl Parser<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }
    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.i + n).copied()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }
    fn err(&self, message: String) -> ImportError {
        self.err_at(self.line, message)
    }
    fn err_at(&self, line: usize, message: String) -> ImportError {
        ImportError::Syntax {
            file: self.file.to_string(),
            line,
            message,
        }
    }
    /// Spaces and tabs (and a backslash-newline continuation); true if any were skipped.
    fn skip_spaces(&mut self) -> bool {
        let start = self.i;
        loop {
            match self.peek() {
                Some(' ') | Some('\t') | Some('\r') => {
                    self.bump();
                }
                Some('\\') if self.peek_at(1) == Some('\n') => {
                    self.bump();
                    self.bump();
                }
                _ => break,
            }
        }
        self.i > start
    }
    fn skip_comment(&mut self) {
        if self.peek() == Some('#') {
            while !matches!(self.peek(), None | Some('\n')) {
                self.bump();
            }
        }
    }
    /// Whitespace, newlines and comments (inside brackets, and between statements).
    fn skip_blank(&mut self) {
        loop {
            self.skip_spaces();
            self.skip_comment();
            match self.peek() {
                Some('\n') => {
                    self.bump();
                }
                _ => break,
            }
        }
    }
    fn skip_blank_lines(&mut self) {
        loop {
            self.skip_blank();
            if self.peek() == Some(';') {
                self.bump();
            } else {
                break;
            }
        }
    }
    fn ident(&mut self) -> Option<String> {
        let c = self.peek()?;
        if !(c.is_ascii_alphabetic() || c == '_') {
            return None;
        }
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                s.push(c);
                self.bump();
            } else {
                break;
            }
        }
        Some(s)
    }
    /// `a.b['c'][:d]` → `a.b.c.d`.
    fn key(&mut self) -> PResult<String> {
        let Some(first) = self.ident() else {
            let c = self.peek().unwrap_or(' ');
            return Err(self.err(format!("expected a setting name, found `{c}`")));
        };
        let mut parts = vec![first];
        loop {
            match self.peek() {
                Some('.') => {
                    self.bump();
                    match self.ident() {
                        Some(p) => parts.push(p),
                        None => {
                            return Err(
                                self.err(format!("expected a name after `{}.`", parts.join(".")))
                            )
                        }
                    }
                }
                Some('[') => {
                    self.bump();
                    self.skip_spaces();
                    let part = match self.peek() {
                        Some('\'') | Some('"') => self.string()?,
                        Some(':') => {
                            self.bump();
                            self.ident().ok_or_else(|| {
                                self.err("expected a symbol name after `:`".into())
                            })?
                        }
                        _ => {
                            return Err(self.err(format!(
                                "expected a quoted name inside `{}[...]`",
                                parts.join(".")
                            )))
                        }
                    };
                    self.skip_spaces();
                    if self.peek() != Some(']') {
                        return Err(
                            self.err(format!("expected `]` after `{}[...`", parts.join(".")))
                        );
                    }
                    self.bump();
                    parts.push(part);
                }
                _ => break,
            }
        }
        Ok(parts.join("."))
    }
    fn string(&mut self) -> PResult<String> {
        let start = self.line;
        let quote = self.bump().expect("caller saw a quote");
        let mut s = String::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(self.err_at(start, "unterminated string".into()));
            };
            match c {
                c if c == quote => return Ok(s),
                '\\' => {
                    let Some(e) = self.bump() else {
                        return Err(self.err_at(start, "unterminated string".into()));
                    };
                    if quote == '\'' {
                        // Single quotes only know \\ and \'.
                        if e != '\\' && e != '\'' {
                            s.push('\\');
                        }
                        s.push(e);
                    } else {
                        s.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            '0' => '\0',
                            's' => ' ',
                            'e' => '\u{1b}',
                            other => other,
                        });
                    }
                }
                '#' if quote == '"' && self.peek() == Some('{') => {
                    return Err(self.err(
                        "string interpolation (`#{...}`) is not supported; write the value literally"
                            .into(),
                    ));
                }
                c => s.push(c),
            }
        }
    }
    fn number(&mut self) -> PResult<RbValue> {
        let mut s = String::new();
        if let Some(c @ ('-' | '+')) = self.peek() {
            s.push(c);
            self.bump();
        }
        let mut float = false;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() || c == '_' {
                s.push(c);
                self.bump();
            } else if c == '.' && !float && self.peek_at(1).is_some_and(|d| d.is_ascii_digit()) {
                float = true;
                s.push(c);
                self.bump();
            } else {
                break;
            }
        }
        if self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            let mut word = s.clone();
            while let Some(c) = self.peek().filter(|c| c.is_ascii_alphanumeric()) {
                word.push(c);
                self.bump();
            }
            return Err(self.err(format!(
                "`{word}` is not a number; quote sizes and other words ('{word}')"
            )));
        }
        let clean: String = s.chars().filter(|c| *c != '_').collect();
        if float {
            clean
                .parse()
                .map(RbValue::Float)
                .map_err(|_| self.err(format!("`{s}` is not a number")))
        } else {
            clean
                .parse()
                .map(RbValue::Int)
                .map_err(|_| self.err(format!("`{s}` is not an integer (or is too large)")))
        }
    }
    fn value(&mut self) -> PResult<RbValue> {
        match self.peek() {
            Some('\'') | Some('"') => self.string().map(RbValue::Str),
            Some('[') => {
                let start = self.line;
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_blank();
                    match self.peek() {
                        Some(']') => {
                            self.bump();
                            return Ok(RbValue::Array(items));
                        }
                        None => {
                            return Err(
                                self.err_at(start, "unterminated array (`[` without `]`)".into())
                            )
                        }
                        _ => {}
                    }
                    items.push(self.value()?);
                    self.skip_blank();
                    match self.peek() {
                        Some(',') => {
                            self.bump();
                        }
                        Some(']') => {}
                        None => {
                            return Err(
                                self.err_at(start, "unterminated array (`[` without `]`)".into())
                            )
                        }
                        Some(c) => {
                            return Err(
                                self.err(format!("expected `,` or `]` in the array, found `{c}`"))
                            )
                        }
                    }
                }
            }
            Some('{') => {
                let start = self.line;
                self.bump();
                let mut entries = Vec::new();
                loop {
                    self.skip_blank();
                    let key = match self.peek() {
                        Some('}') => {
                            self.bump();
                            return Ok(RbValue::Hash(entries));
                        }
                        None => {
                            return Err(
                                self.err_at(start, "unterminated hash (`{` without `}`)".into())
                            )
                        }
                        Some('\'') | Some('"') => {
                            let k = self.string()?;
                            // Ruby's `"key": value` form.
                            if self.peek() == Some(':') {
                                self.bump();
                                self.hash_value_start(&k, false)?;
                            } else {
                                self.hash_value_start(&k, true)?;
                            }
                            k
                        }
                        Some(':') => {
                            self.bump();
                            let k = self.ident().ok_or_else(|| {
                                self.err("expected a symbol name after `:`".into())
                            })?;
                            self.hash_value_start(&k, true)?;
                            k
                        }
                        Some(_) => {
                            let Some(k) = self.ident() else {
                                let c = self.peek().unwrap_or(' ');
                                return Err(self.err(format!("expected a hash key, found `{c}`")));
                            };
                            if self.peek() != Some(':') {
                                return Err(
                                    self.err(format!("expected `:` after the hash key `{k}`"))
                                );
                            }
                            self.bump();
                            self.hash_value_start(&k, false)?;
                            k
                        }
                    };
                    self.skip_blank();
                    let v = self.value()?;
                    entries.push((key, v));
                    self.skip_blank();
                    match self.peek() {
                        Some(',') => {
                            self.bump();
                        }
                        Some('}') => {}
                        None => {
                            return Err(
                                self.err_at(start, "unterminated hash (`{` without `}`)".into())
                            )
                        }
                        Some(c) => {
                            return Err(
                                self.err(format!("expected `,` or `}}` in the hash, found `{c}`"))
                            )
                        }
                    }
                }
            }
            Some(':') => {
                self.bump();
                if matches!(self.peek(), Some('\'') | Some('"')) {
                    return self.string().map(RbValue::Symbol);
                }
                self.ident()
                    .map(RbValue::Symbol)
                    .ok_or_else(|| self.err("expected a symbol name after `:`".into()))
            }
            Some(c) if c.is_ascii_digit() => self.number(),
            Some('-') | Some('+') if self.peek_at(1).is_some_and(|d| d.is_ascii_digit()) => {
                self.number()
            }
            Some(c) if c.is_ascii_alphabetic() || c == '_' => {
                let word = self.ident().expect("starts with a letter");
                match word.as_str() {
                    "true" => Ok(RbValue::Bool(true)),
                    "false" => Ok(RbValue::Bool(false)),
                    "nil" => Ok(RbValue::Nil),
                    _ => Err(self.err(format!(
                        "`{word}` is not a literal value (only quoted strings, numbers, true/false/nil, symbols, arrays and hashes are supported)"
                    ))),
                }
            }
            None | Some('\n') => Err(self.err("expected a value".into())),
            Some(c) => Err(self.err(format!("expected a value, found `{c}`"))),
        }
    }
    /// After a hash key: `=>` when `arrow`, else the `:` was already taken.
    fn hash_value_start(&mut self, key: &str, arrow: bool) -> PResult<()> {
        if arrow {
            self.skip_blank();
            if self.peek() == Some('=') && self.peek_at(1) == Some('>') {
                self.bump();
                self.bump();
            } else {
                return Err(self.err(format!("expected `=>` after the hash key `{key}`")));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Mapping onto larder.toml.

/// A chef-backend.rb setting that was not imported, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Unmapped {
    pub key: String,
    pub line: usize,
    pub reason: String,
}

/// The result of mapping chef-backend.rb.
#[derive(Debug, Clone)]
pub struct ConfigImport {
    /// larder.toml text (loads with [`Config::parse`]).
    pub toml: String,
    pub config: Config,
    /// (chef-backend.rb key, larder.toml key) of every imported setting.
    pub mapped: Vec<(String, String)>,
    pub unmapped: Vec<Unmapped>,
    /// Things the operator should know about imported values.
    pub notes: Vec<String>,
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Port,
    U32,
    U64,
    Bool,
    StrList,
    /// A PostgreSQL memory size; a bare integer counts in units of this many kB (PostgreSQL's
    /// own rule: kB for work_mem, 8 kB blocks for shared_buffers).
    PgSize(i64),
}

/// chef-backend.rb key → larder.toml key (the names are Chef's wherever Larder has the setting).
const MAP: &[(&str, &str, Kind)] = &[
    ("fqdn", "fqdn", Kind::Str),
    ("publish_address", "publish_address", Kind::Str),
    ("ip_version", "ip_version", Kind::Str),
    ("hide_sensitive", "hide_sensitive", Kind::Bool),
    ("postgresql.port", "postgresql.port", Kind::Port),
    (
        "postgresql.db_superuser",
        "postgresql.db_superuser",
        Kind::Str,
    ),
    (
        "postgresql.replication_user",
        "postgresql.replication_user",
        Kind::Str,
    ),
    (
        "postgresql.md5_auth_cidr_addresses",
        "postgresql.md5_auth_cidr_addresses",
        Kind::StrList,
    ),
    (
        "postgresql.max_wal_senders",
        "postgresql.max_wal_senders",
        Kind::U32,
    ),
    (
        "postgresql.max_replication_slots",
        "postgresql.max_replication_slots",
        Kind::U32,
    ),
    (
        "postgresql.max_connections",
        "postgresql.max_connections",
        Kind::U32,
    ),
    (
        "postgresql.work_mem",
        "postgresql.work_mem",
        Kind::PgSize(1),
    ),
    (
        "postgresql.shared_buffers",
        "postgresql.shared_buffers",
        Kind::PgSize(8),
    ),
    (
        "postgresql.wal_keep_size",
        "postgresql.wal_keep_size",
        Kind::PgSize(1024),
    ),
    ("etcd.client_port", "etcd.client_port", Kind::Port),
    ("etcd.peer_port", "etcd.peer_port", Kind::Port),
    (
        "etcd.heartbeat_interval",
        "etcd.heartbeat_interval",
        Kind::U64,
    ),
    ("etcd.election_timeout", "etcd.election_timeout", Kind::U64),
    ("etcd.snapshot_count", "etcd.snapshot_count", Kind::U64),
    ("leaderl.http_port", "leaderl.http_port", Kind::Port),
    ("leaderl.http_address", "leaderl.http_address", Kind::Str),
    (
        "leaderl.leader_ttl_seconds",
        "leaderl.leader_ttl_seconds",
        Kind::U64,
    ),
    ("leaderl.db_timeout", "leaderl.db_timeout", Kind::U64),
    (
        "leaderl.required_active_followers",
        "leaderl.required_active_followers",
        Kind::U32,
    ),
    (
        "leaderl.health_check.interval_seconds",
        "leaderl.health_check.interval_seconds",
        Kind::U64,
    ),
    (
        "leaderl.health_check.max_pgsql_failures",
        "leaderl.health_check.max_pgsql_failures",
        Kind::U32,
    ),
    (
        "leaderl.health_check.max_etcd_failures",
        "leaderl.health_check.max_etcd_failures",
        Kind::U32,
    ),
    (
        "leaderl.health_check.max_elasticsearch_failures",
        "leaderl.health_check.max_elasticsearch_failures",
        Kind::U32,
    ),
    (
        "leaderl.health_check.max_bytes_behind_leader",
        "leaderl.health_check.max_bytes_behind_leader",
        Kind::U64,
    ),
    (
        "leaderl.health_check.fatal_system_checks",
        "leaderl.health_check.fatal_system_checks",
        Kind::Bool,
    ),
    (
        "leaderl.health_check.disk_min_space_mb",
        "leaderl.health_check.disk_min_space_mb",
        Kind::U64,
    ),
    (
        "leaderl.disk_min_space_mb",
        "leaderl.health_check.disk_min_space_mb",
        Kind::U64,
    ),
    ("elasticsearch.port", "elasticsearch.port", Kind::Port),
    ("ssl.duration", "ssl.duration_days", Kind::U32),
    ("elasticsearch.enable", "elasticsearch.enable", Kind::Bool),
];

/// Services whose per-service `log_rotation.*` Chef Backend had; Larder has one for all.
const SERVICES: &[&str] = &["postgresql", "etcd", "leaderl", "elasticsearch"];

/// Why a setting Chef Backend knew has no place in larder.toml.
fn unmapped_reason(key: &str) -> String {
    let (top, leaf) = match key.split_once('.') {
        Some((t, rest)) => (t, rest.rsplit('.').next().unwrap_or(rest)),
        None => (key, key),
    };
    if top == "ssl" {
        return "Larder issues every node's TLS certificate from its own cluster CA (kept in the secrets file); only the validity carries over (ssl.duration → ssl.duration_days). To use your own certificates set ssl.ca, ssl.certificate and ssl.certificate_key in larder.toml (README, Security)".into();
    }
    if leaf == "log_directory" {
        return "Larder logs every service under /var/log/larder/<service>".into();
    }
    if leaf == "data_dir" || leaf == "dir" {
        return "Larder keeps every service's data under /var/opt/larder".into();
    }
    if leaf == "enable" {
        return format!("Larder always runs {top}; it cannot be disabled");
    }
    if top == "vip" || top == "vip_interface" {
        return "Larder does not move a virtual IP yet; frontends find the leader through their haproxy health checks".into();
    }
    match top {
        "postgresql" => "larder.toml has no setting for this PostgreSQL parameter; Larder uses its own value".into(),
        "etcd" => "Larder runs etcd with its own value for this".into(),
        "leaderl" => "leaderl setting without a Larder equivalent".into(),
        "elasticsearch" => "Larder's search service is not Elasticsearch (no JVM, no heap, no cluster settings); it has no such setting".into(),
        _ => "not a chef-backend.rb setting Larder knows".into(),
    }
}

/// Flatten hash values into dotted keys (`etcd.ionice = {'class' => 2}` → `etcd.ionice.class`).
fn flatten(settings: &[RbSetting]) -> Vec<RbSetting> {
    fn go(key: &str, v: &RbValue, line: usize, out: &mut Vec<RbSetting>) {
        match v {
            RbValue::Hash(entries) if !entries.is_empty() => {
                for (k, v) in entries {
                    go(&format!("{key}.{k}"), v, line, out);
                }
            }
            _ => out.push(RbSetting {
                key: key.to_string(),
                value: v.clone(),
                line,
            }),
        }
    }
    let mut out = Vec::new();
    for s in settings {
        go(&s.key, &s.value, s.line, &mut out);
    }
    out
}

fn is_pg_size(s: &str) -> bool {
    let digits = s.trim_start_matches(|c: char| c.is_ascii_digit());
    digits.len() < s.len() && ["", "B", "kB", "MB", "GB", "TB"].contains(&digits.trim())
}

fn convert(kind: Kind, v: &RbValue) -> Result<toml::Value, String> {
    let int = |v: &RbValue| -> Option<i64> {
        match v {
            RbValue::Int(i) => Some(*i),
            RbValue::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    };
    let want = |what: &str| format!("must be {what}, not {}", v.type_name());
    match kind {
        Kind::Str => match v {
            RbValue::Str(s) | RbValue::Symbol(s) => Ok(toml::Value::String(s.clone())),
            _ => Err(want("a string")),
        },
        Kind::Port => match int(v) {
            Some(p) if (1..=65535).contains(&p) => Ok(toml::Value::Integer(p)),
            Some(p) => Err(format!("{p} is not a port (1-65535)")),
            None => Err(want("an integer")),
        },
        Kind::U32 | Kind::U64 => {
            let max = if matches!(kind, Kind::U32) {
                u32::MAX as i64
            } else {
                i64::MAX
            };
            match int(v) {
                Some(n) if (0..=max).contains(&n) => Ok(toml::Value::Integer(n)),
                Some(n) => Err(format!("{n} is out of range (0-{max})")),
                None => Err(want("an integer")),
            }
        }
        Kind::Bool => match v {
            RbValue::Bool(b) => Ok(toml::Value::Boolean(*b)),
            RbValue::Str(s) | RbValue::Symbol(s) if s == "true" || s == "false" => {
                Ok(toml::Value::Boolean(s == "true"))
            }
            _ => Err(want("true or false")),
        },
        Kind::StrList => match v {
            RbValue::Str(s) => Ok(toml::Value::Array(vec![toml::Value::String(s.clone())])),
            RbValue::Array(items) => items
                .iter()
                .map(|i| match i {
                    RbValue::Str(s) | RbValue::Symbol(s) => Ok(toml::Value::String(s.clone())),
                    other => Err(format!(
                        "must be an array of strings; it holds {}",
                        other.type_name()
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(toml::Value::Array),
            _ => Err(want("an array of strings")),
        },
        Kind::PgSize(unit_kb) => match v {
            RbValue::Int(n) if *n > 0 => Ok(toml::Value::String(format!("{}kB", n * unit_kb))),
            RbValue::Str(s) if is_pg_size(s.trim()) => {
                Ok(toml::Value::String(s.trim().replace(' ', "")))
            }
            RbValue::Str(s) => Err(format!(
                "{s:?} is not a PostgreSQL size (like '8MB' or '2GB')"
            )),
            _ => Err(want("a size like '8MB'")),
        },
    }
}

fn set_path(table: &mut toml::Table, dotted: &str, v: toml::Value) {
    let mut parts: Vec<&str> = dotted.split('.').collect();
    let leaf = parts.pop().expect("non-empty key");
    let mut t = table;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("mapping keys never clash with tables");
    }
    t.insert(leaf.to_string(), v);
}

/// Map parsed chef-backend.rb settings onto larder.toml. `default_fqdn` is used when the file
/// sets no `fqdn` (Chef Backend defaulted it to the host name). Fails on a value Larder cannot
/// use or on settings that are not valid together, naming the chef-backend.rb line.
pub fn import_config(
    settings: &[RbSetting],
    file: &str,
    default_fqdn: &str,
) -> Result<ConfigImport, ImportError> {
    let settings = flatten(settings);
    let mut table = toml::Table::new();
    // larder.toml key → (chef key, line) that set it, for error messages.
    let mut origin: Vec<(String, String, usize)> = Vec::new();
    let mut unmapped = Vec::new();
    let mut notes = Vec::new();
    let mut rotation: Vec<(&str, i64, &RbSetting)> = Vec::new();
    let bad = |s: &RbSetting, message: String| ImportError::Value {
        file: file.to_string(),
        line: s.line,
        key: s.key.clone(),
        message,
    };

    for s in &settings {
        if let Some((_, target, kind)) = MAP.iter().find(|(k, _, _)| *k == s.key) {
            if s.value == RbValue::Nil {
                continue; // Ruby's "not set": Larder's default applies.
            }
            let v = convert(*kind, &s.value).map_err(|m| bad(s, m))?;
            origin.retain(|(t, _, _)| t != target);
            origin.push((target.to_string(), s.key.clone(), s.line));
            set_path(&mut table, target, v);
            continue;
        }
        // Per-service log rotation → Larder's one log_rotation.
        let rot = s
            .key
            .rsplit_once(".log_rotation.")
            .or_else(|| s.key.strip_prefix("log_rotation.").map(|leaf| ("", leaf)));
        if let Some((svc, leaf @ ("file_maxbytes" | "num_to_keep"))) = rot {
            if svc.is_empty() || SERVICES.contains(&svc) {
                match s.value {
                    RbValue::Nil => {}
                    RbValue::Int(n) if n > 0 => rotation.push((leaf, n, s)),
                    _ => return Err(bad(s, "must be a positive integer".into())),
                }
                continue;
            }
        }
        if s.key == "postgresql.wal_keep_segments" {
            match s.value {
                RbValue::Nil => {}
                RbValue::Int(n) if n >= 0 => {
                    let mb = n * 16;
                    notes.push(format!(
                        "postgresql.wal_keep_segments = {n} became postgresql.wal_keep_size = \"{mb}MB\" (16 MB segments)"
                    ));
                    origin.push(("postgresql.wal_keep_size".into(), s.key.clone(), s.line));
                    set_path(
                        &mut table,
                        "postgresql.wal_keep_size",
                        toml::Value::String(format!("{mb}MB")),
                    );
                }
                _ => return Err(bad(s, "must be a non-negative integer".into())),
            }
            continue;
        }
        let top = s.key.split('.').next().unwrap_or("");
        let leaf = s.key.rsplit('.').next().unwrap_or("");
        // Settings that say what Larder does anyway are not worth a warning.
        let trivially_true = match (&s.value, top, leaf) {
            (RbValue::Bool(true), "postgresql" | "etcd" | "leaderl", "enable") => {
                s.key.matches('.').count() == 1
            }
            (RbValue::Nil, _, _) => true,
            (RbValue::Str(v), "vip" | "vip_interface", _) if v.is_empty() => true,
            _ => false,
        };
        if !trivially_true {
            unmapped.push(Unmapped {
                key: s.key.clone(),
                line: s.line,
                reason: unmapped_reason(&s.key),
            });
        }
    }
    for leaf in ["file_maxbytes", "num_to_keep"] {
        let vals: Vec<&(&str, i64, &RbSetting)> =
            rotation.iter().filter(|(l, _, _)| *l == leaf).collect();
        if let Some(max) = vals.iter().max_by_key(|(_, n, _)| *n) {
            if vals.iter().any(|(_, n, _)| *n != max.1) {
                notes.push(format!(
                    "Larder has one log_rotation for every service: log_rotation.{leaf} = {} (the largest per-service value, from line {})",
                    max.1, max.2.line
                ));
            }
            let target = format!("log_rotation.{leaf}");
            origin.push((target.clone(), max.2.key.clone(), max.2.line));
            set_path(&mut table, &target, toml::Value::Integer(max.1));
        }
    }

    if !table.contains_key("publish_address") {
        return Err(ImportError::File {
            file: file.to_string(),
            message: "sets no `publish_address`; add `publish_address 'IP'` (this node's address) and run the import again".into(),
        });
    }
    if !table.contains_key("fqdn") {
        notes.push(format!(
            "no `fqdn` in the file: the node is named {default_fqdn:?} (the host name)"
        ));
        table.insert("fqdn".into(), toml::Value::String(default_fqdn.to_string()));
    }

    let body = toml::to_string(&table).map_err(|e| ImportError::File {
        file: file.to_string(),
        message: format!("cannot render larder.toml: {e}"),
    })?;
    let config = match Config::parse(&body, "larder.toml") {
        Ok(c) => c,
        Err(ConfigError::Invalid { key, message, .. }) => {
            return Err(match origin.iter().find(|(t, _, _)| *t == key) {
                Some((_, chef_key, line)) => ImportError::Value {
                    file: file.to_string(),
                    line: *line,
                    key: chef_key.clone(),
                    message: if *chef_key == key {
                        message
                    } else {
                        format!("{message} (as larder.toml `{key}`)")
                    },
                },
                None => ImportError::File {
                    file: file.to_string(),
                    message: format!(
                        "the imported settings are not valid for Larder: `{key}`: {message}"
                    ),
                },
            })
        }
        Err(e) => {
            return Err(ImportError::File {
                file: file.to_string(),
                message: format!("the imported settings are not valid for Larder: {e}"),
            })
        }
    };
    let defaults = crate::config::LeaderlConfig::default();
    if config.leaderl.leader_ttl_seconds > defaults.leader_ttl_seconds {
        notes.push(format!(
            "leaderl.leader_ttl_seconds = {} is kept from Chef Backend: an unplanned failover takes up to that long (Larder's default is {} s; remove the line to use it)",
            config.leaderl.leader_ttl_seconds, defaults.leader_ttl_seconds
        ));
    }

    let mut toml_text = format!(
        "# larder.toml imported from {file} by `larder import-chef-backend`.\n# Settings not listed keep Larder's defaults (see `larder gen-sample-backend-config`).\n"
    );
    if !unmapped.is_empty() {
        toml_text.push_str(&format!("# Not imported from {file}:\n"));
        for u in &unmapped {
            toml_text.push_str(&format!("#   {} (line {}): {}\n", u.key, u.line, u.reason));
        }
    }
    toml_text.push('\n');
    toml_text.push_str(&body);
    let mapped = origin.into_iter().map(|(t, c, _)| (c, t)).collect();
    Ok(ConfigImport {
        toml: toml_text,
        config,
        mapped,
        unmapped,
        notes,
    })
}

// ---------------------------------------------------------------------------------------------
// chef-backend-secrets.json.

/// The secrets of a Chef Backend cluster that Larder keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct ChefSecrets {
    pub db_superuser_password: Secret,
    pub replication_password: Secret,
    /// Absent in the file → Larder generates one.
    pub initial_cluster_token: Option<Secret>,
    pub cluster_name: Option<String>,
    /// Dotted names of keys Larder does not use (their values are never shown).
    pub unknown: Vec<String>,
}

/// Parse chef-backend-secrets.json: `{"postgresql": {"db_superuser_password": …,
/// "replication_password": …}, "etcd": {"initial_cluster_token": …}, "elasticsearch":
/// {"cluster_name": …}}` (flat dotted keys are accepted too). Errors never include a value.
pub fn parse_chef_secrets(text: &str, file: &str) -> Result<ChefSecrets, ImportError> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| ImportError::Syntax {
        file: file.to_string(),
        line: e.line(),
        // Syntax errors from serde_json name the position, never a value.
        message: format!("not valid JSON: {e}"),
    })?;
    if !v.is_object() {
        return Err(ImportError::File {
            file: file.to_string(),
            message: "must be a JSON object".into(),
        });
    }
    let mut leaves = Vec::new();
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.clone())),
        }
    }
    walk("", &v, &mut leaves);
    const KNOWN: &[&str] = &[
        "postgresql.db_superuser_password",
        "postgresql.replication_password",
        "etcd.initial_cluster_token",
        "elasticsearch.cluster_name",
    ];
    let mut found: Vec<Option<String>> = vec![None; KNOWN.len()];
    let mut unknown = Vec::new();
    for (key, value) in leaves {
        match KNOWN.iter().position(|k| *k == key) {
            Some(i) => match value {
                serde_json::Value::String(s) => found[i] = Some(s),
                serde_json::Value::Null => {}
                _ => {
                    return Err(ImportError::File {
                        file: file.to_string(),
                        message: format!("`{key}` must be a string"),
                    })
                }
            },
            None => unknown.push(key),
        }
    }
    let mut take = |i: usize| found[i].take().filter(|s| !s.is_empty());
    let required = |v: Option<String>, key: &str| {
        v.ok_or_else(|| ImportError::File {
            file: file.to_string(),
            message: format!("`{key}` is missing or empty (frontends log in with it)"),
        })
    };
    let su = required(take(0), KNOWN[0])?;
    let repl = required(take(1), KNOWN[1])?;
    Ok(ChefSecrets {
        db_superuser_password: Secret::new(su),
        replication_password: Secret::new(repl),
        initial_cluster_token: take(2).map(Secret::new),
        cluster_name: take(3),
        unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"# chef-backend.rb of be1
fqdn "be1.example.com"
publish_address '10.0.0.11'   # this node
hide_sensitive true
vip nil
postgresql.md5_auth_cidr_addresses = ["samehost", "samenet",
                                      '10.1.0.0/16']  # frontends
postgresql.log_min_duration_statement = 500
postgresql['max_connections'] = 400
postgresql.work_mem = "16MB"
postgresql.enable true
elasticsearch.heap_size = 2048
etcd.ionice = { 'class' => 2, :level => 7 }
leaderl.leader_ttl_seconds = 10
leaderl.health_check.max_bytes_behind_leader = 104_857_600
leaderl.health_check.fatal_system_checks = false
postgresql.log_rotation.file_maxbytes = 1000000
etcd.log_rotation.file_maxbytes = 2000000
ssl.key_length 4096
"#;

    #[test]
    fn parses_the_ruby_subset() {
        let s = parse_rb(SAMPLE, "chef-backend.rb").unwrap();
        let get = |k: &str| {
            s.iter()
                .find(|x| x.key == k)
                .unwrap_or_else(|| panic!("{k}"))
        };
        assert_eq!(get("fqdn").value, RbValue::Str("be1.example.com".into()));
        assert_eq!(get("publish_address").line, 3);
        assert_eq!(get("vip").value, RbValue::Nil);
        assert_eq!(
            get("postgresql.md5_auth_cidr_addresses").value,
            RbValue::Array(vec![
                RbValue::Str("samehost".into()),
                RbValue::Str("samenet".into()),
                RbValue::Str("10.1.0.0/16".into())
            ])
        );
        assert_eq!(get("postgresql.md5_auth_cidr_addresses").line, 6);
        assert_eq!(get("postgresql.max_connections").value, RbValue::Int(400));
        assert_eq!(get("postgresql.max_connections").line, 9);
        assert_eq!(
            get("leaderl.health_check.max_bytes_behind_leader").value,
            RbValue::Int(104_857_600)
        );
        assert_eq!(
            get("etcd.ionice").value,
            RbValue::Hash(vec![
                ("class".into(), RbValue::Int(2)),
                ("level".into(), RbValue::Int(7))
            ])
        );
        assert_eq!(get("ssl.key_length").value, RbValue::Int(4096));
        assert_eq!(s.len(), 17);
    }

    #[test]
    fn strings_escapes_and_call_forms() {
        let s = parse_rb(
            "a 'it\\'s \\n'\nb(\"x\\ty\")\nc = -5\nd :sym\ne = 1.5 ; f = false\n",
            "f",
        )
        .unwrap();
        let v: Vec<_> = s
            .iter()
            .map(|x| (x.key.as_str(), x.value.clone()))
            .collect();
        assert_eq!(
            v,
            [
                ("a", RbValue::Str("it's \\n".into())),
                ("b", RbValue::Str("x\ty".into())),
                ("c", RbValue::Int(-5)),
                ("d", RbValue::Symbol("sym".into())),
                ("e", RbValue::Float(1.5)),
                ("f", RbValue::Bool(false)),
            ]
        );
    }

    fn syntax_line(text: &str) -> (usize, String) {
        match parse_rb(text, "chef-backend.rb").unwrap_err() {
            ImportError::Syntax { line, message, .. } => (line, message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_input_names_the_line() {
        let cases = [
            (
                "fqdn 'a'\npublish_address '10.0.0.1\n",
                2,
                "unterminated string",
            ),
            ("a 1\n\nb = [\"x\", \"y\"\n", 3, "unterminated array"),
            ("a 1\nb = [\"x\" \"y\"]\n", 2, "expected `,` or `]`"),
            ("# c\n\n\nx = node['ipaddress']\n", 4, "not a literal"),
            ("a 1\npostgresql.work_mem = 8MB\n", 2, "quote sizes"),
            ("a 1\nb \"#{x}\"\n", 2, "interpolation"),
            ("a 1\nb\n", 2, "has no value"),
            ("a 1\nb = 1 2\n", 2, "unexpected `2`"),
            ("a 1\n=5\n", 2, "expected a setting name"),
            ("a 1\nx = {'k' 1}\n", 2, "expected `=>`"),
        ];
        for (text, line, msg) in cases {
            let (l, m) = syntax_line(text);
            assert_eq!(l, line, "{text:?}: {m}");
            assert!(m.contains(msg), "{text:?}: {m}");
        }
        let e = parse_rb("a 1\nb = [\n", "/etc/chef-backend/chef-backend.rb")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/chef-backend/chef-backend.rb:2: "),
            "{e}"
        );
    }

    #[test]
    fn maps_known_keys_and_names_the_rest() {
        let s = parse_rb(SAMPLE, "chef-backend.rb").unwrap();
        let r = import_config(&s, "chef-backend.rb", "host").unwrap();
        let c = &r.config;
        assert_eq!(c.fqdn, "be1.example.com");
        assert_eq!(c.publish_address, "10.0.0.11");
        assert_eq!(
            c.postgresql.md5_auth_cidr_addresses,
            ["samehost", "samenet", "10.1.0.0/16"]
        );
        assert_eq!(c.postgresql.max_connections, 400);
        assert_eq!(c.postgresql.work_mem, "16MB");
        assert_eq!(c.leaderl.leader_ttl_seconds, 10);
        assert_eq!(c.leaderl.health_check.max_bytes_behind_leader, 104_857_600);
        // The largest per-service rotation wins, with a note.
        assert_eq!(c.log_rotation.file_maxbytes, 2_000_000);
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("log_rotation.file_maxbytes")));
        assert!(r
            .notes
            .iter()
            .any(|n| n.contains("leader_ttl_seconds = 10")));
        let names: Vec<(&str, usize)> = r
            .unmapped
            .iter()
            .map(|u| (u.key.as_str(), u.line))
            .collect();
        assert_eq!(
            names,
            [
                ("postgresql.log_min_duration_statement", 8),
                ("elasticsearch.heap_size", 12),
                ("etcd.ionice.class", 13),
                ("etcd.ionice.level", 13),
                ("ssl.key_length", 19),
            ]
        );
        assert!(r.unmapped[1].reason.contains("not Elasticsearch"));
        // The text written loads with Larder's own parser and says what was left out.
        let again = Config::parse(&r.toml, "larder.toml").unwrap();
        assert_eq!(&again, c);
        assert!(r.toml.contains("#   elasticsearch.heap_size (line 12)"));
        // Nothing unset is pinned: Larder's defaults stay defaults.
        assert!(!r.toml.contains("loop_interval_ms"));
    }

    #[test]
    fn bad_values_name_the_chef_line_and_key() {
        let base = "fqdn 'n1'\npublish_address '10.0.0.1'\n";
        let err = |extra: &str| {
            let text = format!("{base}{extra}");
            let s = parse_rb(&text, "cb.rb").unwrap();
            import_config(&s, "cb.rb", "h").unwrap_err()
        };
        let e = err("postgresql.port = 'abc'\n");
        assert!(
            matches!(&e, ImportError::Value { line: 3, key, .. } if key == "postgresql.port"),
            "{e}"
        );
        let e = err("postgresql.md5_auth_cidr_addresses = ['10.0.0.1']\n");
        assert!(
            e.to_string()
                .starts_with("cb.rb:3: `postgresql.md5_auth_cidr_addresses`"),
            "{e}"
        );
        let e = err("\netcd.peer_port = 5432\n");
        assert!(
            e.to_string().starts_with("cb.rb:4: `etcd.peer_port`")
                && e.to_string().contains("already used"),
            "{e}"
        );
        let e = err("postgresql.shared_buffers = 'lots'\n");
        assert!(e.to_string().contains("not a PostgreSQL size"), "{e}");
        // Missing publish_address is a clear error.
        let s = parse_rb("fqdn 'x'\n", "cb.rb").unwrap();
        let e = import_config(&s, "cb.rb", "h").unwrap_err().to_string();
        assert!(e.contains("publish_address"), "{e}");
    }

    #[test]
    fn sizes_fqdn_default_and_wal_segments() {
        let s = parse_rb(
            "publish_address '10.0.0.1'\npostgresql.shared_buffers = 16384\npostgresql.wal_keep_segments = 32\n",
            "cb.rb",
        )
        .unwrap();
        let r = import_config(&s, "cb.rb", "myhost").unwrap();
        assert_eq!(r.config.fqdn, "myhost");
        assert_eq!(r.config.postgresql.shared_buffers, "131072kB");
        assert_eq!(r.config.postgresql.wal_keep_size, "512MB");
        assert!(r.unmapped.is_empty(), "{:?}", r.unmapped);
    }

    #[test]
    fn secrets_map_and_unknown_keys_are_named_without_values() {
        let text = r#"{
  "postgresql": {"db_superuser_password": "su-secret-1", "replication_password": "repl-secret-2"},
  "etcd": {"initial_cluster_token": "tok-3"},
  "elasticsearch": {"cluster_name": "chef-cluster"},
  "other": {"api_key": "zzz-never-shown"}
}"#;
        let s = parse_chef_secrets(text, "s.json").unwrap();
        assert_eq!(s.db_superuser_password.expose(), "su-secret-1");
        assert_eq!(s.replication_password.expose(), "repl-secret-2");
        assert_eq!(s.initial_cluster_token.as_ref().unwrap().expose(), "tok-3");
        assert_eq!(s.cluster_name.as_deref(), Some("chef-cluster"));
        assert_eq!(s.unknown, ["other.api_key"]);
        assert!(!format!("{s:?}").contains("su-secret-1"));

        let flat =
            r#"{"postgresql.db_superuser_password": "a", "postgresql.replication_password": "b"}"#;
        let s = parse_chef_secrets(flat, "s.json").unwrap();
        assert_eq!(s.replication_password.expose(), "b");
        assert!(s.initial_cluster_token.is_none() && s.cluster_name.is_none());

        let e = parse_chef_secrets(
            r#"{"postgresql": {"db_superuser_password": "sekrit"}}"#,
            "s.json",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("postgresql.replication_password") && !e.contains("sekrit"),
            "{e}"
        );
        let e =
            parse_chef_secrets("{\n  \"postgresql\": {\"x\": \"sekrit\"\n", "s.json").unwrap_err();
        assert!(matches!(e, ImportError::Syntax { line: 3, .. }), "{e:?}");
        assert!(!e.to_string().contains("sekrit"));
    }
}
