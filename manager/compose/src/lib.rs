//! Compose files for stacks, loaded as docker's CLI loads them for `docker stack
//! deploy` (docker/cli `cli/compose/loader`): YAML 1.2 with anchors and merge keys,
//! `version:` 3.x or none, forbidden and ignored keys, variable interpolation on the
//! generic tree with docker's casts, `env_file`, the typed v3 model ([`types`]) and the
//! merge of several files ([`merge`]); then the conversion of a loaded stack into the
//! networks, secrets, configs and services a deploy creates ([`convert`]).
//!
//! The core is sans-IO: [`load`] takes the files' text, the environment and a reader
//! for `env_file`s; [`load_paths`] is the thin shell that reads real files. Errors name
//! the file, the line and the key path: `app.yml:12: services.web.deploy.replicas: must
//! be an integer`. Nothing here panics on any input (`fuzz` module).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub mod convert;
pub mod emit;
pub mod interpolate;
pub mod merge;
pub mod types;
pub mod yaml;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

pub use interpolate::Environment;
pub use types::Config;

use serde_json::Value as Json;
use yaml::{Node, Value};

/// What loading a compose file found wrong, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.render())]
pub struct Error {
    /// The file as the user named it (`app.yml`, `-` for stdin).
    pub file: String,
    /// The line (1-based), when the fault has one.
    pub line: Option<usize>,
    /// The key path (`services.web.deploy.replicas`), when the fault has one.
    pub path: Option<String>,
    /// What is wrong, in docker's words where docker has them.
    pub message: String,
}

impl Error {
    fn render(&self) -> String {
        let mut out = self.file.clone();
        if let Some(line) = self.line {
            out.push_str(&format!(":{line}"));
        }
        if let Some(path) = &self.path {
            out.push_str(&format!(": {path}"));
        }
        out.push_str(&format!(": {}", self.message));
        out
    }
}

/// A key swarm ignores, found in a file (docker warns "Ignoring unsupported options").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The file.
    pub file: String,
    /// The key's line.
    pub line: usize,
    /// The service.
    pub service: String,
    /// The key (`build`).
    pub key: String,
}

/// A loaded stack: the merged, interpolated, typed file and the ignored keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// The model.
    pub config: Config,
    /// Every ignored key, one entry per service and key, in file order.
    pub ignored: Vec<Ignored>,
}

impl Loaded {
    /// Docker's warning for the ignored keys (`Ignoring unsupported options: build,
    /// restart`, each key once, sorted), or `None` when there are none.
    #[must_use]
    pub fn warning(&self) -> Option<String> {
        let keys: std::collections::BTreeSet<&str> =
            self.ignored.iter().map(|i| i.key.as_str()).collect();
        (!keys.is_empty()).then(|| {
            format!(
                "Ignoring unsupported options: {}",
                keys.into_iter().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// One compose file's text and where it is.
#[derive(Debug, Clone)]
pub struct File {
    /// The name errors use (the path as given, or `-`).
    pub name: String,
    /// The directory relative paths (`env_file`, bind sources, secret files) are
    /// resolved against (the file's directory; the working directory for stdin).
    pub dir: PathBuf,
    /// The text.
    pub text: String,
}

/// Reads an `env_file` (given its resolved path): the I/O the loader needs.
pub trait ReadFile {
    /// The file's text.
    ///
    /// # Errors
    /// The file cannot be read.
    fn read(&self, path: &Path) -> std::io::Result<String>;
}

impl<F: Fn(&Path) -> std::io::Result<String>> ReadFile for F {
    fn read(&self, path: &Path) -> std::io::Result<String> {
        self(path)
    }
}

/// Top-level keys (besides `x-` extensions).
const TOP_KEYS: &[&str] = &[
    "version", "services", "networks", "volumes", "secrets", "configs",
];

/// Service keys swarm honours (or keeps, as docker's types do).
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "labels",
    "ports",
    "networks",
    "secrets",
    "configs",
    "volumes",
    "healthcheck",
    "stop_grace_period",
    "stop_signal",
    "user",
    "hostname",
    "working_dir",
    "extra_hosts",
    "dns",
    "dns_search",
    "dns_opt",
    "cap_add",
    "cap_drop",
    "tty",
    "stdin_open",
    "read_only",
    "init",
    "sysctls",
    "ulimits",
    "oom_score_adj",
    "logging",
    "isolation",
    "credential_spec",
    "deploy",
];

/// Service keys swarm ignores, with a warning (docker's `UnsupportedProperties`, its
/// deprecated keys, and keys in the schema that the conversion never reads).
/// `restart` is also kept in the model: docker falls back to it.
pub const IGNORED_KEYS: &[&str] = &[
    "build",
    "cgroupns_mode",
    "cgroup_parent",
    "container_name",
    "depends_on",
    "devices",
    "domainname",
    "expose",
    "external_links",
    "ipc",
    "links",
    "mac_address",
    "network_mode",
    "pid",
    "privileged",
    "restart",
    "security_opt",
    "shm_size",
    "tmpfs",
    "userns_mode",
];

/// Service keys docker refuses, with its advice.
pub const FORBIDDEN_KEYS: &[(&str, &str)] = &[
    ("extends", "Support for `extends` is not implemented yet."),
    (
        "volume_driver",
        "Instead of setting the volume driver on the service, define a volume using the top-level `volumes` option and specify the driver there.",
    ),
    (
        "volumes_from",
        "To share a volume between services, define it using the top-level `volumes` option and reference it from each service that shares it using the service-level `volumes` option.",
    ),
    ("cpu_quota", "Set resource limits using deploy.resources"),
    ("cpu_shares", "Set resource limits using deploy.resources"),
    ("cpuset", "Set resource limits using deploy.resources"),
    ("mem_limit", "Set resource limits using deploy.resources"),
    (
        "memswap_limit",
        "Set resource limits using deploy.resources",
    ),
];

/// Loads and merges `files` in order, interpolating from `env` and reading `env_file`s
/// with `read`.
///
/// # Errors
/// The first fault, with its file, line and key path: bad YAML, a top level that is no
/// mapping, an unsupported `version`, a forbidden or unknown key, a bad template or
/// missing required variable, a value of the wrong type, an unreadable `env_file`.
pub fn load(files: &[File], env: &Environment, read: &dyn ReadFile) -> Result<Loaded, Error> {
    let mut ignored = Vec::new();
    let mut configs = Vec::with_capacity(files.len());
    for file in files {
        configs.push(load_one(file, env, read, &mut ignored)?);
    }
    let config = match configs.len() {
        0 => Config::default(),
        1 => configs.pop().unwrap_or_default(),
        _ => merge::merge(&configs).map_err(|message| Error {
            file: files.last().map(|f| f.name.clone()).unwrap_or_default(),
            line: None,
            path: None,
            message,
        })?,
    };
    Ok(Loaded { config, ignored })
}

/// Reads `paths` (`-` is stdin, read once) and loads them with the process's
/// environment, as `meshctl stack config` and `stack deploy` do.
///
/// # Errors
/// A file cannot be read, or [`load`]'s errors.
pub fn load_paths(paths: &[PathBuf], stdin: &mut dyn std::io::Read) -> Result<Loaded, Error> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path.display().to_string();
        let fail = |e: std::io::Error| Error {
            file: name.clone(),
            line: None,
            path: None,
            message: e.to_string(),
        };
        let (text, dir) = if name == "-" {
            let mut text = String::new();
            stdin.read_to_string(&mut text).map_err(fail)?;
            (text, cwd.clone())
        } else {
            let text = std::fs::read_to_string(path).map_err(fail)?;
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => cwd.join(p),
                _ => cwd.clone(),
            };
            (text, dir)
        };
        files.push(File { name, dir, text });
    }
    let env: Environment = std::env::vars().collect();
    load(&files, &env, &|p: &Path| std::fs::read_to_string(p))
}

/// `a.b.0.c` from path segments.
pub(crate) fn display_path(path: &[String]) -> String {
    path.join(".")
}

/// Serde's words turned into docker's (`invalid type: string "x", expected u64` ->
/// `must be an integer`).
pub(crate) fn words(message: &str) -> String {
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
    {
        return format!("additional property {field} is not allowed");
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        return format!("{field} is required");
    }
    if message.starts_with("invalid type") || message.starts_with("invalid value") {
        let expected = message.rsplit("expected ").next().unwrap_or("");
        let what = match expected {
            "u64" | "u32" | "u16" | "i64" | "i32" | "u8" | "usize" => "an integer",
            "f64" | "f32" => "a number",
            "a boolean" => "a boolean",
            "a string" => "a string",
            "a sequence" => "a list",
            e if e.starts_with("struct") || e == "a map" => "a mapping",
            e if e.starts_with("integer") => return format!("must be {e}"),
            _ => return message.to_owned(),
        };
        return format!("must be {what}");
    }
    message.to_owned()
}

fn at(file: &File, line: usize, path: &str, message: impl Into<String>) -> Error {
    Error {
        file: file.name.clone(),
        line: Some(line),
        path: (!path.is_empty()).then(|| path.to_owned()),
        message: message.into(),
    }
}

/// One file: parse, check keys, interpolate, type, fold `env_file`s, resolve paths.
fn load_one(
    file: &File,
    env: &Environment,
    read: &dyn ReadFile,
    ignored: &mut Vec<Ignored>,
) -> Result<Config, Error> {
    let mut root = yaml::parse(&file.text)
        .map_err(|e| at(file, e.line, "", format!("yaml: {}", e.message)))?
        .filter(|n| n.as_map().is_some())
        .ok_or_else(|| Error {
            file: file.name.clone(),
            line: None,
            path: None,
            message: "Top-level object must be a mapping".into(),
        })?;
    if let Some(version) = root.get("version") {
        let text = match &version.value {
            Value::Str(s) => s.trim().to_owned(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            _ => String::new(),
        };
        let ok = text == "3"
            || text
                .strip_prefix("3.")
                .is_some_and(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
        if !ok {
            return Err(at(
                file,
                version.line,
                "version",
                format!("unsupported Compose file version: {text}; use version 3.x or none"),
            ));
        }
    }
    check_keys(file, &mut root, ignored)?;
    if let Value::Map(entries) = &mut root.value {
        for entry in entries.iter_mut() {
            if TOP_KEYS.contains(&entry.key.as_str()) && entry.key != "version" {
                let mut path = vec![entry.key.clone()];
                interpolate::interpolate(&mut entry.value, &mut path, env)
                    .map_err(|e| at(file, e.line, &e.path, e.message))?;
            }
        }
    }
    let (json, top_extensions, service_extensions) = to_typed_json(&root);
    let mut config: Config = serde_path_to_error::deserialize(json).map_err(|e| {
        let segments: Vec<String> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Enum { .. }
                | serde_path_to_error::Segment::Unknown => None,
            })
            .collect();
        let mut segments = segments;
        let mut message = words(&e.inner().to_string());
        // The readers of short and long syntaxes name the entry they fail in first
        // (`1: invalid port "x"`): that is part of the path.
        while let Some((head, rest)) = message.split_once(": ") {
            if head.contains(' ') || !has_child(&root, &segments, head) {
                break;
            }
            segments.push(head.to_owned());
            message = rest.to_owned();
        }
        let line = line_of(&root, &segments);
        // An unknown key is named in the message, after the mapping that holds it.
        if let Some(field) = message
            .strip_prefix("additional property ")
            .and_then(|r| r.strip_suffix(" is not allowed"))
            && segments.last().is_some_and(|last| last == field)
        {
            segments.pop();
        }
        at(file, line, &display_path(&segments), message)
    })?;
    config.extensions = top_extensions;
    for (name, extensions) in service_extensions {
        if let Some(service) = config.services.get_mut(&name) {
            service.extensions = extensions;
        }
    }
    resolve(file, &root, &mut config, env, read)?;
    Ok(config)
}

/// Whether the node at `path` has a key or index `child`.
fn has_child(root: &Node, path: &[String], child: &str) -> bool {
    let mut node = root;
    for segment in path {
        let next = match &node.value {
            Value::Map(entries) => entries.iter().find(|e| &e.key == segment).map(|e| &e.value),
            Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return false,
        }
    }
    match &node.value {
        Value::Map(entries) => entries.iter().any(|e| e.key == child),
        Value::Seq(items) => child.parse::<usize>().is_ok_and(|i| i < items.len()),
        _ => false,
    }
}

/// The line of the deepest node of `root` along `path`.
fn line_of(root: &Node, path: &[String]) -> usize {
    let mut node = root;
    let mut line = root.line;
    for segment in path {
        let next = match &node.value {
            Value::Map(entries) => entries.iter().find(|e| &e.key == segment).map(|e| {
                line = e.line;
                &e.value
            }),
            Value::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        match next {
            Some(n) => {
                node = n;
                line = n.line;
            }
            None => break,
        }
    }
    line
}

/// Checks the top-level and service keys: unknown and forbidden ones are refused,
/// ignored ones recorded and removed.
fn check_keys(file: &File, root: &mut Node, ignored: &mut Vec<Ignored>) -> Result<(), Error> {
    let Value::Map(entries) = &mut root.value else {
        return Ok(());
    };
    for entry in entries.iter() {
        if !TOP_KEYS.contains(&entry.key.as_str()) && !entry.key.starts_with("x-") {
            return Err(at(
                file,
                entry.line,
                "(root)",
                format!("additional property {} is not allowed", entry.key),
            ));
        }
    }
    for section in ["networks", "volumes", "secrets", "configs"] {
        if let Some(e) = entries.iter().find(|e| e.key == section)
            && !matches!(e.value.value, Value::Map(_) | Value::Null)
        {
            return Err(at(file, e.value.line, section, "must be a mapping"));
        }
    }
    let Some(services) = entries.iter_mut().find(|e| e.key == "services") else {
        return Ok(());
    };
    let services = match &mut services.value.value {
        Value::Map(services) => services,
        Value::Null => return Ok(()),
        _ => {
            return Err(at(
                file,
                services.value.line,
                "services",
                "must be a mapping",
            ));
        }
    };
    for service in services.iter_mut() {
        let name = service.key.clone();
        let keys = match &mut service.value.value {
            Value::Map(keys) => keys,
            Value::Null => continue,
            _ => {
                return Err(at(
                    file,
                    service.value.line,
                    &format!("services.{name}"),
                    "must be a mapping",
                ));
            }
        };
        for key in keys.iter() {
            let k = key.key.as_str();
            if let Some((_, advice)) = FORBIDDEN_KEYS.iter().find(|(f, _)| *f == k) {
                return Err(at(
                    file,
                    key.line,
                    &format!("services.{name}.{k}"),
                    format!("unsupported option: {advice}"),
                ));
            }
            if IGNORED_KEYS.contains(&k) {
                ignored.push(Ignored {
                    file: file.name.clone(),
                    line: key.line,
                    service: name.clone(),
                    key: k.to_owned(),
                });
            } else if !SERVICE_KEYS.contains(&k) && !k.starts_with("x-") {
                return Err(at(
                    file,
                    key.line,
                    &format!("services.{name}"),
                    format!("additional property {k} is not allowed"),
                ));
            }
        }
        keys.retain(|k| k.key == "restart" || !IGNORED_KEYS.contains(&k.key.as_str()));
    }
    Ok(())
}

/// Extension fields by service name.
type ServiceExtensions = BTreeMap<String, BTreeMap<String, Json>>;

/// The tree as JSON for typing, without `x-` keys (returned apart: top-level, and by
/// service); the old `external: {name: N}` becomes `external: true, name: N`, and an
/// external object without a name is named by its key.
fn to_typed_json(root: &Node) -> (Json, BTreeMap<String, Json>, ServiceExtensions) {
    let mut top = serde_json::Map::new();
    let mut top_ext = BTreeMap::new();
    let mut service_ext = BTreeMap::new();
    for entry in root.as_map().unwrap_or_default() {
        if entry.key.starts_with("x-") {
            top_ext.insert(entry.key.clone(), to_json(&entry.value));
            continue;
        }
        let mut value = to_json(&entry.value);
        match entry.key.as_str() {
            "services" => {
                if let Json::Object(services) = &mut value {
                    for (name, service) in services.iter_mut() {
                        if let Json::Object(keys) = service {
                            let ext: BTreeMap<String, Json> = keys
                                .iter()
                                .filter(|(k, _)| k.starts_with("x-"))
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect();
                            keys.retain(|k, _| !k.starts_with("x-"));
                            if !ext.is_empty() {
                                service_ext.insert(name.clone(), ext);
                            }
                        }
                    }
                }
            }
            "networks" | "volumes" | "secrets" | "configs" => {
                if let Json::Object(objects) = &mut value {
                    for (key, object) in objects.iter_mut() {
                        // An external object's name is its key unless it names one
                        // (docker's loader does the same).
                        if let Json::Object(keys) = object
                            && keys.get("external") == Some(&Json::Bool(true))
                            && !keys.contains_key("name")
                        {
                            keys.insert("name".into(), Json::String(key.clone()));
                        }
                        // Extension fields of networks, volumes, secrets and configs
                        // (3.7+) are allowed, and not kept.
                        if let Json::Object(keys) = object {
                            keys.retain(|k, _| !k.starts_with("x-"));
                        }
                        if let Json::Object(keys) = object
                            && let Some(Json::Object(ext)) = keys.get("external").cloned()
                        {
                            if let Some(name) = ext.get("name") {
                                keys.insert("name".into(), name.clone());
                            }
                            keys.insert("external".into(), Json::Bool(true));
                        }
                    }
                }
            }
            _ => {}
        }
        top.insert(entry.key.clone(), value);
    }
    if let Some(Json::Number(n)) = top.get("version") {
        let text = n.to_string();
        top.insert("version".into(), Json::String(text));
    }
    (Json::Object(top), top_ext, service_ext)
}

/// A node as JSON (a NaN or infinity becomes its text: no JSON number holds it).
pub(crate) fn to_json(node: &Node) -> Json {
    match &node.value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Json::String(f.to_string()), Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Seq(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|e| (e.key.clone(), to_json(&e.value)))
                .collect(),
        ),
    }
}

/// `path` made absolute against `dir` (`~` against `$HOME`), as docker's loader does.
fn absolute(dir: &Path, path: &str, env: &Environment) -> String {
    if let Some(rest) = path.strip_prefix('~')
        && (rest.is_empty() || rest.starts_with('/'))
        && let Some(home) = env.get("HOME")
    {
        return format!("{home}{rest}");
    }
    if path.starts_with('/') {
        return path.to_owned();
    }
    let joined = dir.join(path);
    // Drop `.` components so `./data` reads as `<dir>/data`.
    let clean: PathBuf = joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    clean.display().to_string()
}

/// Reads and folds `env_file`s into `environment` (which wins), fills names without a
/// value from `env`, and makes relative paths absolute.
fn resolve(
    file: &File,
    root: &Node,
    config: &mut Config,
    env: &Environment,
    read: &dyn ReadFile,
) -> Result<(), Error> {
    for (name, service) in &mut config.services {
        let mut folded: BTreeMap<String, Option<String>> = BTreeMap::new();
        for (i, env_file) in service.env_file.iter().enumerate() {
            let path_segments = ["services".to_owned(), name.clone(), "env_file".to_owned()];
            let line = line_of(root, &path_segments);
            let key_path = format!("services.{name}.env_file");
            let path = absolute(&file.dir, env_file, env);
            let text = read
                .read(Path::new(&path))
                .map_err(|e| at(file, line, &key_path, format!("{path}: {e}")))?;
            for (k, v) in parse_env_file(&text, env).map_err(|e| {
                at(
                    file,
                    line,
                    &format!("{key_path}.{i}"),
                    format!("{path}: {e}"),
                )
            })? {
                folded.insert(k, Some(v));
            }
        }
        service.env_file.clear();
        for (k, v) in std::mem::take(&mut service.environment) {
            let v = v.or_else(|| env.get(&k).cloned());
            folded.insert(k, v);
        }
        service.environment = folded;
        for mount in &mut service.volumes {
            if mount.kind == "bind"
                && let Some(source) = &mut mount.source
            {
                *source = absolute(&file.dir, source, env);
            }
        }
    }
    for object in config
        .secrets
        .values_mut()
        .chain(config.configs.values_mut())
    {
        if let Some(f) = &mut object.file {
            *f = absolute(&file.dir, f, env);
        }
    }
    Ok(())
}

/// An env file as docker reads it (`opts.ParseEnvFile`): `KEY=VALUE` lines taken as
/// written, `#` comments and blank lines skipped, a lone `KEY` taken from `env` when
/// set.
///
/// # Errors
/// A name with whitespace or an empty name (docker's words).
pub fn parse_env_file(text: &str, env: &Environment) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (line, None),
        };
        if key.is_empty() {
            return Err(format!("line {}: no variable name on line '{line}'", n + 1));
        }
        if key.contains(char::is_whitespace) {
            return Err(format!(
                "line {}: variable '{key}' contains whitespaces",
                n + 1
            ));
        }
        match value {
            Some(v) => out.push((key.to_owned(), v.to_owned())),
            None => {
                if let Some(v) = env.get(key) {
                    out.push((key.to_owned(), v.clone()));
                }
            }
        }
    }
    Ok(out)
}
