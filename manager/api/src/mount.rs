//! A task's mounts (issue 14): docker's `--mount` syntax (`type=bind|volume|tmpfs`,
//! `source`/`src`, `target`/`destination`/`dst`, `readonly`/`ro`, `tmpfs-size`,
//! `tmpfs-mode`, `volume-nocopy`), parsed and checked with docker's messages where
//! docker has them.
//!
//! - `bind`: a path of the node (absolute) at the target;
//! - `volume`: a named local volume of the node, created on first use and kept
//!   (an anonymous volume, without a source, is refused: nothing would remove it);
//! - `tmpfs`: a fresh tmpfs private to the task (`tmpfs-size` in bytes or with a
//!   `k`/`m`/`g` suffix, `tmpfs-mode` in octal).
//!
//! Where each is on the node, and how each runtime applies it, is the agent's
//! (`docs/services.md`).

use std::fmt;

use crate::spec::{SpecError, invalid};

/// The most mounts a task may have.
pub const MAX_MOUNTS: usize = 32;
/// The longest volume name.
pub const MAX_VOLUME_NAME_LEN: usize = 128;
/// The longest mount path (Linux's `PATH_MAX`).
pub const MAX_PATH_LEN: usize = 4096;

/// What a mount is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountKind {
    /// A file or directory of the node.
    Bind,
    /// A named local volume of the node.
    Volume,
    /// A fresh tmpfs of the task's own.
    Tmpfs,
}

impl MountKind {
    /// `bind`, `volume` or `tmpfs`, as docker writes it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MountKind::Bind => "bind",
            MountKind::Volume => "volume",
            MountKind::Tmpfs => "tmpfs",
        }
    }
}

impl fmt::Display for MountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One of a task's mounts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Bind, volume or tmpfs.
    #[serde(rename = "type")]
    pub kind: MountKind,
    /// Bind: the node's absolute path; volume: the volume's name; tmpfs: empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Where the task sees it: an absolute path other than `/`.
    pub target: String,
    /// Mounted read-only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub readonly: bool,
    /// Tmpfs: its size in bytes (`None`: the kernel's default, half the memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_size: Option<u64>,
    /// Tmpfs: its root's mode (`None`: `1777`, as docker's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs_mode: Option<u32>,
    /// Volume: docker's `volume-nocopy` (do not fill an empty volume from the image).
    #[serde(default, skip_serializing_if = "is_false")]
    pub volume_nocopy: bool,
}

/// docker's `strconv.ParseBool`.
fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// docker's `units.RAMInBytes`: a number (decimals allowed), then an optional `k`,
/// `m`, `g`, `t` or `p` (powers of 1024), `i` and `b` (`64m`, `1.5GiB`, `512kb`).
///
/// # Errors
/// Text that is not such a size, or one over `u64`.
pub fn parse_ram_bytes(value: &str) -> Result<u64, SpecError> {
    let bad = || invalid(format!("invalid size: '{value}'"));
    let text = value.trim_end_matches(['b', 'B']);
    let text = text.strip_suffix(['i', 'I']).unwrap_or(text);
    let (number, shift) = match text.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_lowercase() {
                'k' => 10,
                'm' => 20,
                'g' => 30,
                't' => 40,
                'p' => 50,
                _ => return Err(bad()),
            };
            (&text[..text.len() - 1], shift)
        }
        _ => (text, 0),
    };
    let number = number.strip_suffix(' ').unwrap_or(number);
    if value.len() - text.len() > 2
        || number.is_empty()
        || !number.starts_with(|c: char| c.is_ascii_digit())
        || !number.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return Err(bad());
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') {
        return Err(bad());
    }
    let whole: u64 = whole.parse().map_err(|_| bad())?;
    let mut bytes = whole.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if !fraction.is_empty() {
        // Enough digits for any power of 1024 up to 2^50.
        let digits = &fraction[..fraction.len().min(15)];
        let scale = 10u128.pow(u32::try_from(digits.len()).map_err(|_| bad())?);
        let part: u128 = digits.parse().map_err(|_| bad())?;
        let extra = u64::try_from(part * (1u128 << shift) / scale).map_err(|_| bad())?;
        bytes = bytes.checked_add(extra).ok_or_else(bad)?;
    }
    Ok(bytes)
}

/// Checks a named volume's name: docker's local driver's rule,
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]+`, at most [`MAX_VOLUME_NAME_LEN`] characters.
///
/// # Errors
/// Why it is refused, in docker's words.
pub fn validate_volume_name(name: &str) -> Result<(), SpecError> {
    if crate::template::is_template(name) && crate::template::check(name).is_ok() {
        // Placeholders (`data-{{.Task.Slot}}`) are filled in on the node, which checks
        // the name again; here only the text around them is.
        let text = crate::template::strip(name);
        if text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Ok(());
        }
    }
    let ok = name.len() >= 2
        && name.len() <= MAX_VOLUME_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "{name:?} includes invalid characters for a local volume name, only \
             \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed (at least 2, at most \
             {MAX_VOLUME_NAME_LEN}). If you intended to pass a host directory, use absolute \
             path"
        )))
    }
}

/// Checks an absolute path: starting with `/`, without `.` or `..` components or a
/// NUL byte, at most [`MAX_PATH_LEN`] bytes (docker's wording).
fn validate_path(path: &str) -> Result<(), SpecError> {
    let ok = path.starts_with('/')
        && path.len() <= MAX_PATH_LEN
        && !path.contains('\0')
        && path.split('/').all(|c| c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid mount path: '{path}' mount path must be absolute (without '.' or '..')"
        )))
    }
}

impl Mount {
    /// Parses docker's `--mount` value: comma-separated `key=value` fields (`type`
    /// defaults to `volume`, as docker's), with `readonly`/`ro` and `volume-nocopy`
    /// also bare.
    ///
    /// # Errors
    /// An unknown field, a bad value, an option of another type, or what
    /// [`Mount::validate`] refuses.
    pub fn parse(value: &str) -> Result<Self, SpecError> {
        let mut kind = Some(MountKind::Volume);
        let mut mount = Mount {
            kind: MountKind::Volume,
            source: String::new(),
            target: String::new(),
            readonly: false,
            tmpfs_size: None,
            tmpfs_mode: None,
            volume_nocopy: false,
        };
        let mut type_text = String::new();
        let mut type_given = false;
        let mut volume_options = false;
        for field in value.split(',') {
            let Some((key, val)) = field.split_once('=') else {
                match field.to_ascii_lowercase().as_str() {
                    "readonly" | "ro" => mount.readonly = true,
                    "volume-nocopy" => {
                        mount.volume_nocopy = true;
                        volume_options = true;
                    }
                    _ => {
                        return Err(invalid(format!(
                            "invalid field '{field}' must be a key=value pair"
                        )));
                    }
                }
                continue;
            };
            let key = key.to_ascii_lowercase();
            let bad_value = || invalid(format!("invalid value for {key}: {val}"));
            match key.as_str() {
                "type" => {
                    type_given = true;
                    type_text = val.to_ascii_lowercase();
                    kind = match type_text.as_str() {
                        "bind" => Some(MountKind::Bind),
                        "volume" => Some(MountKind::Volume),
                        "tmpfs" => Some(MountKind::Tmpfs),
                        _ => None,
                    };
                }
                "source" | "src" => mount.source = val.to_string(),
                "target" | "dst" | "destination" => mount.target = val.to_string(),
                "readonly" | "ro" => mount.readonly = parse_bool(val).ok_or_else(bad_value)?,
                "volume-nocopy" => {
                    mount.volume_nocopy = parse_bool(val).ok_or_else(bad_value)?;
                    volume_options = true;
                }
                "tmpfs-size" => {
                    mount.tmpfs_size = Some(parse_ram_bytes(val).map_err(|_| bad_value())?);
                }
                "tmpfs-mode" => {
                    mount.tmpfs_mode = Some(
                        u32::from_str_radix(val, 8)
                            .ok()
                            .filter(|m| *m <= 0o7777)
                            .ok_or_else(bad_value)?,
                    );
                }
                _ => {
                    return Err(invalid(format!(
                        "unexpected key '{key}' in '{field}' (supported: type, source, \
                         target, readonly, tmpfs-size, tmpfs-mode, volume-nocopy)"
                    )));
                }
            }
        }
        if type_given && type_text.is_empty() {
            return Err(invalid("type is required"));
        }
        mount.kind = kind.ok_or_else(|| {
            invalid(format!(
                "invalid mount type '{type_text}': expected bind, volume or tmpfs"
            ))
        })?;
        if mount.target.is_empty() {
            return Err(invalid("target is required"));
        }
        if volume_options && mount.kind != MountKind::Volume {
            return Err(invalid(format!(
                "cannot mix 'volume-*' options with mount type '{}'",
                mount.kind
            )));
        }
        mount.validate()?;
        Ok(mount)
    }

    /// Checks the mount as the engine would: the target (absolute, not `/`, without
    /// `..`), the source for its type, and options only of its type.
    ///
    /// # Errors
    /// Why the mount is refused, in docker's words where docker has them.
    pub fn validate(&self) -> Result<(), SpecError> {
        let config = |why: String| {
            invalid(format!(
                "invalid mount config for type \"{}\": {why}",
                self.kind
            ))
        };
        if self.target.is_empty() {
            return Err(config("field Target must not be empty".into()));
        }
        validate_path(&self.target)?;
        if self.target.trim_end_matches('/').is_empty() {
            return Err(invalid("invalid specification: destination can't be '/'"));
        }
        if self.kind != MountKind::Tmpfs && (self.tmpfs_size.is_some() || self.tmpfs_mode.is_some())
        {
            return Err(invalid(format!(
                "cannot mix 'tmpfs-*' options with mount type '{}'",
                self.kind
            )));
        }
        if self.kind != MountKind::Volume && self.volume_nocopy {
            return Err(invalid(format!(
                "cannot mix 'volume-*' options with mount type '{}'",
                self.kind
            )));
        }
        if self.tmpfs_mode.is_some_and(|m| m > 0o7777) {
            return Err(config("tmpfs-mode must be octal permission bits".into()));
        }
        match self.kind {
            MountKind::Bind => {
                if self.source.is_empty() {
                    return Err(config("field Source must not be empty".into()));
                }
                validate_path(&self.source)
            }
            MountKind::Volume => {
                if self.source.is_empty() {
                    return Err(config(
                        "a volume needs a name (source=NAME): anonymous volumes are not \
                         supported"
                            .into(),
                    ));
                }
                validate_volume_name(&self.source)
            }
            MountKind::Tmpfs => {
                if self.source.is_empty() {
                    Ok(())
                } else {
                    Err(config("field Source must not be specified".into()))
                }
            }
        }
    }
}

impl std::str::FromStr for Mount {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mount::parse(s)
    }
}

impl fmt::Display for Mount {
    /// The mount in docker's `--mount` syntax.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type={}", self.kind)?;
        if !self.source.is_empty() {
            write!(f, ",source={}", self.source)?;
        }
        write!(f, ",target={}", self.target)?;
        if self.readonly {
            f.write_str(",readonly")?;
        }
        if let Some(size) = self.tmpfs_size {
            write!(f, ",tmpfs-size={size}")?;
        }
        if let Some(mode) = self.tmpfs_mode {
            write!(f, ",tmpfs-mode={mode:o}")?;
        }
        if self.volume_nocopy {
            f.write_str(",volume-nocopy")?;
        }
        Ok(())
    }
}

/// Checks a task's mounts: each one, at most [`MAX_MOUNTS`], no target twice.
///
/// # Errors
/// The first refused mount, or `duplicate mount point: /x` (docker's).
pub fn validate_mounts(mounts: &[Mount]) -> Result<(), SpecError> {
    if mounts.len() > MAX_MOUNTS {
        return Err(invalid(format!(
            "a task may have at most {MAX_MOUNTS} mounts (got {})",
            mounts.len()
        )));
    }
    for (i, mount) in mounts.iter().enumerate() {
        mount.validate()?;
        let target = mount.target.trim_end_matches('/');
        if mounts[..i]
            .iter()
            .any(|m| m.target.trim_end_matches('/') == target)
        {
            return Err(invalid(format!("duplicate mount point: {}", mount.target)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(value: &str) -> Mount {
        Mount::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    #[test]
    fn dockers_syntax_variants() {
        let bind = parse("type=bind,source=/srv/data,target=/data,readonly");
        assert_eq!(
            (
                bind.kind,
                bind.source.as_str(),
                bind.target.as_str(),
                bind.readonly
            ),
            (MountKind::Bind, "/srv/data", "/data", true)
        );
        assert_eq!(
            parse("Type=BIND,src=/srv/data,dst=/data,ro=true"),
            bind,
            "aliases and case"
        );
        assert_eq!(
            parse("type=bind,src=/srv/data,destination=/data,ro=1"),
            bind
        );
        assert!(!parse("type=bind,src=/a,target=/b,readonly=false").readonly);
        assert!(!parse("type=bind,src=/a,target=/b,ro=0").readonly);
        assert_eq!(
            parse("src=/srv/type=1,target=/b,type=bind").source,
            "/srv/type=1"
        );
        let volume = parse("source=cache,target=/var/cache");
        assert_eq!(volume.kind, MountKind::Volume, "docker's default type");
        assert!(parse("type=volume,src=cache,dst=/c,volume-nocopy").volume_nocopy);
        assert!(parse("type=volume,src=cache,dst=/c,volume-nocopy=true").volume_nocopy);
        let tmpfs = parse("type=tmpfs,target=/scratch,tmpfs-size=64m,tmpfs-mode=1770");
        assert_eq!(tmpfs.tmpfs_size, Some(64 << 20));
        assert_eq!(tmpfs.tmpfs_mode, Some(0o1770));
        assert_eq!(parse("type=tmpfs,dst=/t").tmpfs_size, None);
    }

    #[test]
    fn a_mount_reads_back_as_it_was_written() {
        for text in [
            "type=bind,source=/srv/data,target=/data,readonly",
            "type=volume,source=cache,target=/var/cache,volume-nocopy",
            "type=tmpfs,target=/scratch,tmpfs-size=1048576,tmpfs-mode=700",
        ] {
            assert_eq!(parse(text).to_string(), text);
            assert_eq!(parse(&parse(text).to_string()), parse(text));
        }
    }

    #[test]
    fn sizes_as_docker_reads_them() {
        for (text, bytes) in [
            ("1024", 1024),
            ("64k", 64 << 10),
            ("64K", 64 << 10),
            ("64kb", 64 << 10),
            ("1m", 1 << 20),
            ("1MiB", 1 << 20),
            ("2g", 2 << 30),
            ("1.5g", 3 << 29),
            ("10 m", 10 << 20),
        ] {
            assert_eq!(parse_ram_bytes(text).unwrap(), bytes, "{text}");
        }
        for text in ["", "m", "-1", "1x", "1.2.3m", "99999999999p", "1kk", ".5m"] {
            assert!(parse_ram_bytes(text).is_err(), "{text}");
        }
    }

    #[test]
    fn every_refusal_says_why() {
        let cases = [
            ("type=bind,source=/a", "target is required"),
            (
                "type=bind,target=/a",
                "invalid mount config for type \"bind\": field Source must not be empty",
            ),
            (
                "type=bind,source=relative,target=/a",
                "invalid mount path: 'relative' mount path must be absolute",
            ),
            (
                "type=bind,source=/a/../etc,target=/a",
                "invalid mount path: '/a/../etc'",
            ),
            (
                "type=bind,source=/a,target=data",
                "invalid mount path: 'data' mount path must be absolute",
            ),
            (
                "type=bind,source=/a,target=/x/../y",
                "invalid mount path: '/x/../y'",
            ),
            (
                "type=bind,source=/a,target=/",
                "invalid specification: destination can't be '/'",
            ),
            ("type=nfs,source=/a,target=/b", "invalid mount type 'nfs'"),
            ("type=,target=/b", "type is required"),
            (
                "type=bind,source=/a,target=/b,colour=red",
                "unexpected key 'colour' in 'colour=red'",
            ),
            (
                "type=bind,source=/a,target=/b,rw",
                "invalid field 'rw' must be a key=value pair",
            ),
            (
                "type=bind,source=/a,target=/b,readonly=yes",
                "invalid value for readonly: yes",
            ),
            (
                "type=bind,source=/a,target=/b,tmpfs-size=1m",
                "cannot mix 'tmpfs-*' options with mount type 'bind'",
            ),
            (
                "type=volume,source=v1,target=/b,tmpfs-mode=700",
                "cannot mix 'tmpfs-*' options with mount type 'volume'",
            ),
            (
                "type=bind,source=/a,target=/b,volume-nocopy",
                "cannot mix 'volume-*' options with mount type 'bind'",
            ),
            (
                "type=tmpfs,target=/b,tmpfs-size=lots",
                "invalid value for tmpfs-size: lots",
            ),
            (
                "type=tmpfs,target=/b,tmpfs-mode=999",
                "invalid value for tmpfs-mode: 999",
            ),
            (
                "type=tmpfs,target=/b,tmpfs-mode=17777",
                "invalid value for tmpfs-mode: 17777",
            ),
            (
                "type=tmpfs,source=x,target=/b",
                "invalid mount config for type \"tmpfs\": field Source must not be specified",
            ),
            (
                "type=volume,target=/b",
                "anonymous volumes are not supported",
            ),
            (
                "type=volume,source=a,target=/b",
                "\"a\" includes invalid characters for a local volume name",
            ),
            (
                "type=volume,source=-cache,target=/b",
                "includes invalid characters",
            ),
            (
                "type=volume,source=my cache,target=/b",
                "includes invalid characters",
            ),
        ];
        for (value, want) in cases {
            let err = Mount::parse(value).expect_err(value).to_string();
            assert!(err.contains(want), "{value}: {err}");
        }
    }

    #[test]
    fn a_tasks_mounts_are_bounded_and_targets_unique() {
        let a = parse("type=tmpfs,target=/a");
        let b = parse("type=bind,source=/srv,target=/b");
        validate_mounts(&[a.clone(), b.clone()]).unwrap();
        let mut again = b.clone();
        again.target = "/b/".into();
        assert_eq!(
            validate_mounts(&[a.clone(), b, again])
                .unwrap_err()
                .to_string(),
            "duplicate mount point: /b/"
        );
        let many: Vec<Mount> = (0..=MAX_MOUNTS)
            .map(|i| parse(&format!("type=tmpfs,target=/t{i}")))
            .collect();
        assert!(
            validate_mounts(&many)
                .unwrap_err()
                .to_string()
                .contains("at most 32 mounts")
        );
        validate_mounts(&many[..MAX_MOUNTS]).unwrap();
    }
}
