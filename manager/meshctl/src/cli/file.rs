//! `meshctl secret ...` and `meshctl config ...`'s pure parts, after docker's CLI: the
//! spec `create`'s flags build, and what `ls` and `inspect` print (a config's data, never
//! a secret's: the managers do not send it).

use std::collections::BTreeMap;

use base64::Engine as _;
use clap::Args;
use serde_json::{Value, json};

use mesh_api::file::{FileInfo, FileSpec};
use mesh_api::file_ref::{FileKind, FileRef};
use mesh_api::node::{format_id, parse_label};
use mesh_api::spec::TaskSpec;
use mesh_api::time::rfc3339;

use super::flags::FlagError;
use super::view::human_duration;

/// The spec `secret create NAME --label K=V ...` (or `config create`) describes.
///
/// # Errors
/// A malformed label or name.
pub fn spec(kind: FileKind, name: &str, labels: &[String]) -> Result<FileSpec, FlagError> {
    let mut spec = FileSpec {
        name: name.to_string(),
        labels: BTreeMap::new(),
    };
    for value in labels {
        let (k, v) = parse_label(value).map_err(|e| FlagError::new(format!("--label: {e}")))?;
        spec.labels.insert(k, v);
    }
    spec.validate(kind)?;
    Ok(spec)
}

/// Checks data read from a file or standard input before it is sent (the managers
/// check it again): not empty, within the kind's limit.
///
/// # Errors
/// Why it is refused, in swarmkit's words.
pub fn check_data(kind: FileKind, data: &[u8]) -> Result<(), FlagError> {
    mesh_api::file_ref::validate_file_data(kind, data)?;
    Ok(())
}

/// Keeps the files `filters` admit (`name=VALUE`: names containing it; several: any).
///
/// # Errors
/// A filter other than `name=...`.
pub fn filtered(files: Vec<FileInfo>, filters: &[String]) -> Result<Vec<FileInfo>, FlagError> {
    let names = super::format::name_filters(filters)?;
    Ok(files
        .into_iter()
        .filter(|f| super::format::name_passes(&f.spec.name, &names))
        .collect())
}

/// `secret ls`'s table (docker's columns: ID, NAME, DRIVER, CREATED, UPDATED; a config
/// has no DRIVER), in the managers' order (by name).
#[must_use]
pub fn table(kind: FileKind, files: &[FileInfo], now_ms: u64) -> String {
    let ago = |ms: u64| format!("{} ago", human_duration(now_ms.saturating_sub(ms)));
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            let mut row = vec![format_id(f.id), f.spec.name.clone()];
            if kind == FileKind::Secret {
                row.push(String::new());
            }
            row.extend([ago(f.created_at_ms), ago(f.updated_at_ms)]);
            row
        })
        .collect();
    let headers: &[&str] = match kind {
        FileKind::Secret => &["ID", "NAME", "DRIVER", "CREATED", "UPDATED"],
        FileKind::Config => &["ID", "NAME", "CREATED", "UPDATED"],
    };
    super::table::render(headers, &rows)
}

/// `inspect`'s JSON of one secret or config, in docker's shape (`Spec.Data`, base64, for
/// a config only).
#[must_use]
pub fn inspect_json(file: &FileInfo) -> Value {
    let mut spec = json!({"Name": file.spec.name, "Labels": file.spec.labels});
    if let Some(data) = &file.data {
        spec["Data"] = json!(base64::engine::general_purpose::STANDARD.encode(data.as_bytes()));
    }
    json!({
        "ID": format_id(file.id),
        "Version": {"Index": file.version},
        "CreatedAt": rfc3339(file.created_at_ms),
        "UpdatedAt": rfc3339(file.updated_at_ms),
        "Spec": spec,
    })
}

/// `inspect --pretty`: docker's text (a config's data as text).
#[must_use]
pub fn pretty(file: &FileInfo) -> String {
    let mut out = format!(
        "ID:              {}\nName:              {}\n",
        format_id(file.id),
        file.spec.name
    );
    if !file.spec.labels.is_empty() {
        out.push_str("Labels:\n");
        for (k, v) in &file.spec.labels {
            out.push_str(&format!(" - {k}={v}\n"));
        }
    }
    out.push_str(&format!(
        "Created at:            {}\nUpdated at:            {}\n",
        rfc3339(file.created_at_ms),
        rfc3339(file.updated_at_ms)
    ));
    if let Some(data) = &file.data {
        out.push_str(&format!(
            "Data:\n{}\n",
            String::from_utf8_lossy(data.as_bytes())
        ));
    }
    out
}

/// `service create`'s `--secret` and `--config`.
#[derive(Clone, Debug, Default, Args)]
pub struct FileFlags {
    /// Give the tasks a secret: NAME, or source=NAME[,target=FILE,uid=,gid=,mode=]
    /// (repeatable; the file is /run/secrets/FILE).
    #[arg(long, value_name = "SECRET")]
    pub secret: Vec<String>,
    /// Give the tasks a config: NAME, or source=NAME[,target=/PATH,uid=,gid=,mode=]
    /// (repeatable; default target /NAME).
    #[arg(long, value_name = "CONFIG")]
    pub config: Vec<String>,
}

impl FileFlags {
    /// Sets `task`'s references from the flags.
    ///
    /// # Errors
    /// The first malformed reference.
    pub fn apply(&self, task: &mut TaskSpec) -> Result<(), FlagError> {
        task.secrets = parse_refs(FileKind::Secret, "secret", &self.secret)?;
        task.configs = parse_refs(FileKind::Config, "config", &self.config)?;
        Ok(())
    }
}

/// `service update`'s `--secret-add/-rm` and `--config-add/-rm`.
#[derive(Clone, Debug, Default, Args)]
pub struct FileUpdateFlags {
    /// Add or update a secret: NAME, or source=NAME[,target=FILE,uid=,gid=,mode=].
    #[arg(long, value_name = "SECRET")]
    pub secret_add: Vec<String>,
    /// Remove a secret (by name).
    #[arg(long, value_name = "SECRET")]
    pub secret_rm: Vec<String>,
    /// Add or update a config: NAME, or source=NAME[,target=/PATH,uid=,gid=,mode=].
    #[arg(long, value_name = "CONFIG")]
    pub config_add: Vec<String>,
    /// Remove a config (by name).
    #[arg(long, value_name = "CONFIG")]
    pub config_rm: Vec<String>,
}

impl FileUpdateFlags {
    /// Changes `task`'s references as docker's CLI does: the removals first (by name),
    /// then the additions, each replacing a reference of the same target (so that
    /// `--secret-rm old --secret-add source=new,target=old` rotates a secret).
    ///
    /// # Errors
    /// A malformed reference, or a removal of one the service does not have.
    pub fn apply(&self, task: &mut TaskSpec) -> Result<(), FlagError> {
        for (kind, rm, add, refs) in [
            (
                FileKind::Secret,
                &self.secret_rm,
                &self.secret_add,
                &mut task.secrets,
            ),
            (
                FileKind::Config,
                &self.config_rm,
                &self.config_add,
                &mut task.configs,
            ),
        ] {
            for name in rm {
                let before = refs.len();
                refs.retain(|r| r.source != *name);
                if refs.len() == before {
                    return Err(FlagError::new(format!(
                        "--{kind}-rm: the service has no {kind} {name}"
                    )));
                }
            }
            for reference in parse_refs(kind, &format!("{kind}-add"), add)? {
                refs.retain(|r| r.target != reference.target);
                refs.push(reference);
            }
        }
        Ok(())
    }
}

fn parse_refs(kind: FileKind, flag: &str, values: &[String]) -> Result<Vec<FileRef>, FlagError> {
    values
        .iter()
        .map(|v| FileRef::parse(kind, v).map_err(|e| FlagError::new(format!("--{flag}: {e}"))))
        .collect()
}

/// `service inspect`'s `Secrets` or `Configs` in docker's shape.
#[must_use]
pub fn refs_json(kind: FileKind, refs: &[FileRef]) -> Value {
    let name_key = match kind {
        FileKind::Secret => "SecretName",
        FileKind::Config => "ConfigName",
    };
    Value::Array(
        refs.iter()
            .map(|r| {
                json!({
                    "File": {
                        "Name": r.target,
                        "UID": r.uid.to_string(),
                        "GID": r.gid.to_string(),
                        "Mode": r.mode,
                    },
                    name_key: r.source,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_api::file::FileData;

    fn info(kind: FileKind) -> FileInfo {
        mesh_api::file::StoredFile::new(
            kind,
            0xab,
            spec(kind, "app.conf", &["env=prod".into()]).unwrap(),
            FileData::from(b"port = 80".to_vec()),
            1_700_000_000_000,
        )
        .unwrap()
        .info(kind)
    }

    #[test]
    fn ls_has_dockers_columns() {
        let now = 1_700_000_000_000 + 90_000;
        let secret = table(FileKind::Secret, &[info(FileKind::Secret)], now);
        let mut lines = secret.lines();
        let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(header, ["ID", "NAME", "DRIVER", "CREATED", "UPDATED"]);
        let row = lines.next().unwrap();
        assert!(row.starts_with("00000000000000ab   app.conf"), "{row}");
        assert!(row.contains("About a minute ago"), "{row}");
        let config = table(FileKind::Config, &[info(FileKind::Config)], now);
        assert!(config.starts_with("ID "));
        assert!(!config.contains("DRIVER"));
    }

    #[test]
    fn inspect_shows_a_configs_data_and_never_a_secrets() {
        let secret = inspect_json(&info(FileKind::Secret));
        assert_eq!(secret["Spec"]["Name"], "app.conf");
        assert_eq!(secret["Spec"]["Labels"]["env"], "prod");
        assert!(secret["Spec"].get("Data").is_none());
        assert!(!pretty(&info(FileKind::Secret)).contains("port"));
        let config = inspect_json(&info(FileKind::Config));
        assert_eq!(config["Spec"]["Data"], "cG9ydCA9IDgw");
        assert!(pretty(&info(FileKind::Config)).ends_with("Data:\nport = 80\n"));
    }

    #[test]
    fn bad_labels_names_and_data_are_refused() {
        assert!(spec(FileKind::Secret, "a b", &[]).is_err());
        assert!(spec(FileKind::Secret, "ok", &["=v".into()]).is_err());
        assert!(check_data(FileKind::Secret, b"").is_err());
        let big = vec![0u8; 500 * 1024 + 1];
        assert_eq!(
            check_data(FileKind::Secret, &big).unwrap_err().to_string(),
            "secret data must be larger than 0 and at most 500 KiB (got 512001 bytes)"
        );
        assert!(check_data(FileKind::Config, &big).is_ok());
    }

    #[test]
    fn update_flags_rotate_a_secret_in_place() {
        let mut task = mesh_api::spec::ServiceSpec::new(
            "api",
            mesh_api::spec::RuntimeKind::Process,
            "/bin/true",
            vec![],
        )
        .task;
        FileFlags {
            secret: vec!["pw".into(), "source=tls,target=tls.key,mode=0400".into()],
            config: vec!["app.conf".into()],
        }
        .apply(&mut task)
        .unwrap();
        assert_eq!(task.configs[0].target, "/app.conf");
        let rotate = FileUpdateFlags {
            secret_rm: vec!["pw".into()],
            secret_add: vec!["source=pw_v2,target=pw".into()],
            ..FileUpdateFlags::default()
        };
        rotate.apply(&mut task).unwrap();
        let refs: Vec<_> = task
            .secrets
            .iter()
            .map(|r| (r.source.as_str(), r.target.as_str()))
            .collect();
        assert_eq!(refs, [("tls", "tls.key"), ("pw_v2", "pw")]);
        let err = rotate.apply(&mut task).unwrap_err();
        assert_eq!(err.to_string(), "--secret-rm: the service has no secret pw");
        let bad = FileUpdateFlags {
            config_add: vec!["source=x,target=relative".into()],
            ..FileUpdateFlags::default()
        };
        assert!(
            bad.apply(&mut task)
                .unwrap_err()
                .to_string()
                .starts_with("--config-add: invalid config target")
        );
    }

    #[test]
    fn service_refs_are_shown_as_docker_does() {
        let r = FileRef::parse(FileKind::Secret, "source=pw,target=db,uid=7,mode=0400").unwrap();
        let v = refs_json(FileKind::Secret, &[r]);
        assert_eq!(v[0]["SecretName"], "pw");
        assert_eq!(v[0]["File"]["Name"], "db");
        assert_eq!(v[0]["File"]["UID"], "7");
        assert_eq!(v[0]["File"]["Mode"], 0o400);
    }
}
