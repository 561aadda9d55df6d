//! Secrets and configs as a service names them (issue 14's first layer): their names and
//! sizes, and a service's reference to one, parsed from docker's `--secret` and
//! `--config` syntax (`NAME`, or `source=NAME,target=T,uid=U,gid=G,mode=M`), with
//! docker's defaults and swarmkit's limits.
//!
//! A secret's file is `/run/secrets/<target>` in the task; a config's is `<target>`, an
//! absolute path (`/<name>` by default, as docker puts it). Neither may leave its place
//! with `..`.

use crate::spec::{SpecError, invalid};

/// The largest secret (swarmkit's `MaxSecretSize`: 500 KiB).
pub const MAX_SECRET_SIZE: usize = 500 * 1024;
/// The largest config (swarmkit's `MaxConfigSize`: 1000 KiB).
pub const MAX_CONFIG_SIZE: usize = 1000 * 1024;
/// The longest secret or config name (swarmkit's).
pub const MAX_FILE_NAME_LEN: usize = 64;
/// Where a task's secrets are.
pub const SECRETS_DIR: &str = "/run/secrets";
/// A file's mode when the reference gives none (docker's).
pub const DEFAULT_MODE: u32 = 0o444;

/// Secret or config: the two share names, references and verbs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// Encrypted at rest, never returned by the API, on a tmpfs in the task.
    Secret,
    /// Stored as it is, readable through `config inspect`.
    Config,
}

impl FileKind {
    /// `secret` or `config`, as messages say it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Secret => "secret",
            FileKind::Config => "config",
        }
    }

    /// The largest data of this kind.
    #[must_use]
    pub fn max_size(self) -> usize {
        match self {
            FileKind::Secret => MAX_SECRET_SIZE,
            FileKind::Config => MAX_CONFIG_SIZE,
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks a secret's or config's name: swarmkit's rule (letters and digits, with `-`,
/// `_` and `.` inside), at most [`MAX_FILE_NAME_LEN`] characters.
///
/// # Errors
/// Why it is refused.
pub fn validate_file_name(kind: FileKind, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_FILE_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid {} name {name:?}: only [a-zA-Z0-9-_.] are allowed, starting and ending \
             with a letter or digit, at most {MAX_FILE_NAME_LEN} characters",
            kind.as_str()
        )))
    }
}

/// Checks a secret's or config's data: not empty, and within its kind's limit.
///
/// # Errors
/// Why it is refused, in swarmkit's words.
pub fn validate_file_data(kind: FileKind, data: &[u8]) -> Result<(), SpecError> {
    let max = kind.max_size();
    if data.is_empty() || data.len() > max {
        return Err(invalid(format!(
            "{} data must be larger than 0 and at most {} KiB (got {} bytes)",
            kind.as_str(),
            max / 1024,
            data.len()
        )));
    }
    Ok(())
}

/// A service's reference to a secret or config, and the file it becomes in a task.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRef {
    /// The secret's or config's name (the managers store its ID once they found it).
    pub source: String,
    /// The file: a name under [`SECRETS_DIR`] (secret) or an absolute path (config).
    pub target: String,
    /// Its owner, a numeric user ID.
    pub uid: u32,
    /// Its group, a numeric group ID.
    pub gid: u32,
    /// Its permission bits.
    pub mode: u32,
}

impl FileRef {
    /// Parses docker's syntax: `NAME`, or comma-separated `source=` (or `src=`),
    /// `target=`, `uid=`, `gid=` and `mode=` (octal), with docker's defaults: the target
    /// is the source's name (a config's: `/<name>`), root's, mode `0444`.
    ///
    /// # Errors
    /// An unknown or repeated field, a missing source, a bad number, mode or target.
    pub fn parse(kind: FileKind, value: &str) -> Result<Self, SpecError> {
        let what = kind.as_str();
        let mut fields: Vec<(&str, &str)> = Vec::new();
        if value.contains('=') {
            for field in value.split(',') {
                let (key, val) = field.split_once('=').ok_or_else(|| {
                    invalid(format!(
                        "invalid field {field:?} in {what} request {value:?}"
                    ))
                })?;
                let key = match key.trim().to_ascii_lowercase().as_str() {
                    "source" | "src" => "source",
                    "target" => "target",
                    "uid" => "uid",
                    "gid" => "gid",
                    "mode" => "mode",
                    _ => {
                        return Err(invalid(format!(
                            "invalid field {key:?} in {what} request {value:?}"
                        )));
                    }
                };
                if fields.iter().any(|(k, _)| *k == key) {
                    return Err(invalid(format!(
                        "field {key:?} given twice in {what} request {value:?}"
                    )));
                }
                fields.push((key, val.trim()));
            }
        } else {
            fields.push(("source", value.trim()));
        }
        let get = |key: &str| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let source = get("source")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid(format!("source is required in {what} request {value:?}")))?
            .to_string();
        validate_file_name(kind, &source)?;
        let id = |key: &str| -> Result<u32, SpecError> {
            get(key).map_or(Ok(0), |v| {
                v.parse()
                    .map_err(|_| invalid(format!("invalid {key} {v:?}: expected a number")))
            })
        };
        let mode = match get("mode") {
            None => DEFAULT_MODE,
            Some(v) => u32::from_str_radix(v, 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    invalid(format!(
                        "invalid mode {v:?}: expected octal permission bits (0400)"
                    ))
                })?,
        };
        let target = match (kind, get("target")) {
            (_, Some(t)) => t.to_string(),
            (FileKind::Secret, None) => source.clone(),
            (FileKind::Config, None) => format!("/{source}"),
        };
        let reference = Self {
            uid: id("uid")?,
            gid: id("gid")?,
            source,
            target,
            mode,
        };
        reference.validate(kind)?;
        Ok(reference)
    }

    /// Checks the target (a secret's is a relative path under [`SECRETS_DIR`], a
    /// config's an absolute path other than `/`; neither has empty, `.` or `..`
    /// components) and the mode.
    ///
    /// # Errors
    /// Why the target or mode is refused.
    pub fn validate(&self, kind: FileKind) -> Result<(), SpecError> {
        let target = &self.target;
        let rest = match kind {
            FileKind::Secret => Some(target.as_str()).filter(|t| !t.starts_with('/')),
            FileKind::Config => target.strip_prefix('/'),
        };
        let ok = rest.is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != "..")
                && !rest.contains('\0')
        });
        if self.mode > 0o777 {
            return Err(invalid(format!(
                "invalid mode {:o}: expected permission bits (0400)",
                self.mode
            )));
        }
        if ok {
            Ok(())
        } else {
            Err(invalid(match kind {
                FileKind::Secret => format!(
                    "invalid secret target {target:?}: a file name under {SECRETS_DIR} \
                     (relative, without '.' or '..')"
                ),
                FileKind::Config => format!(
                    "invalid config target {target:?}: an absolute file path (without '.' \
                     or '..')"
                ),
            }))
        }
    }

    /// The file's path in the task.
    #[must_use]
    pub fn path(&self, kind: FileKind) -> String {
        match kind {
            FileKind::Secret => format!("{SECRETS_DIR}/{}", self.target),
            FileKind::Config => self.target.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_takes_dockers_defaults() {
        let s = FileRef::parse(FileKind::Secret, "db_pass").unwrap();
        assert_eq!(
            (s.source.as_str(), s.target.as_str(), s.uid, s.gid, s.mode),
            ("db_pass", "db_pass", 0, 0, 0o444)
        );
        assert_eq!(s.path(FileKind::Secret), "/run/secrets/db_pass");
        let c = FileRef::parse(FileKind::Config, "nginx.conf").unwrap();
        assert_eq!(c.path(FileKind::Config), "/nginx.conf");
    }

    #[test]
    fn the_long_syntax_sets_every_field() {
        let s = FileRef::parse(
            FileKind::Secret,
            "src=db_pass, target=app/password,uid=1000,gid=1001,mode=0400",
        )
        .unwrap();
        assert_eq!(
            (s.source.as_str(), s.target.as_str(), s.uid, s.gid, s.mode),
            ("db_pass", "app/password", 1000, 1001, 0o400)
        );
        let c = FileRef::parse(
            FileKind::Config,
            "source=site,target=/etc/nginx/conf.d/site.conf",
        )
        .unwrap();
        assert_eq!(c.path(FileKind::Config), "/etc/nginx/conf.d/site.conf");
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        let cases = [
            (FileKind::Secret, "target=x", "source is required"),
            (FileKind::Secret, "source=", "source is required"),
            (FileKind::Secret, "source=a,colour=red", "invalid field"),
            (FileKind::Secret, "source=a,source=b", "given twice"),
            (FileKind::Secret, "source=a,uid=root", "invalid uid"),
            (FileKind::Secret, "source=a,gid=-1", "invalid gid"),
            (FileKind::Secret, "source=a,mode=0999", "invalid mode"),
            (FileKind::Secret, "source=a,mode=01777", "invalid mode"),
            (
                FileKind::Secret,
                "source=a,target=/etc/shadow",
                "invalid secret target",
            ),
            (
                FileKind::Secret,
                "source=a,target=../../etc/x",
                "invalid secret target",
            ),
            (
                FileKind::Secret,
                "source=a,target=a//b",
                "invalid secret target",
            ),
            (
                FileKind::Config,
                "source=a,target=relative",
                "invalid config target",
            ),
            (
                FileKind::Config,
                "source=a,target=/",
                "invalid config target",
            ),
            (
                FileKind::Config,
                "source=a,target=/etc/../x",
                "invalid config target",
            ),
            (FileKind::Secret, "bad name", "invalid secret name"),
            (FileKind::Config, "-dash", "invalid config name"),
        ];
        for (kind, value, want) in cases {
            let err = FileRef::parse(kind, value).expect_err(value).to_string();
            assert!(err.contains(want), "{value}: {err}");
        }
    }

    #[test]
    fn names_and_sizes_follow_swarmkit() {
        validate_file_name(FileKind::Secret, "app.db-pass_v2").unwrap();
        assert!(validate_file_name(FileKind::Secret, &"a".repeat(65)).is_err());
        assert!(validate_file_name(FileKind::Secret, "trailing.").is_err());
        validate_file_data(FileKind::Secret, &[0; MAX_SECRET_SIZE]).unwrap();
        let err = validate_file_data(FileKind::Secret, &[0; MAX_SECRET_SIZE + 1]).unwrap_err();
        assert!(err.to_string().contains("at most 500 KiB"), "{err}");
        assert!(validate_file_data(FileKind::Config, &[]).is_err());
        validate_file_data(FileKind::Config, &[0; MAX_CONFIG_SIZE]).unwrap();
    }
}
