//! Secrets and configs as the managers keep them ([`StoredFile`]), as the API shows them
//! ([`FileInfo`]: never a secret's data) and as an agent receives the ones its tasks
//! need ([`FileContent`]). How a service names one is [`crate::file_ref`].
//!
//! Their bytes are a [`FileData`]: base64 in JSON, and never printed by `Debug`, so that
//! a command, an assignment or a task logged whole does not log a secret.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::file_ref::{FileKind, validate_file_data, validate_file_name};
use crate::spec::{SpecError, invalid};

/// A secret's or config's identity, written as 16 hex digits like other IDs.
pub type FileId = u64;

/// The most labels a secret or config carries.
pub const MAX_LABELS: usize = 64;

/// What a user says about a secret or config besides its data (`secret create
/// --label`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSpec {
    /// Unique name among its kind.
    pub name: String,
    /// Operator labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl FileSpec {
    /// Checks the name and the labels.
    ///
    /// # Errors
    /// Why the spec is refused.
    pub fn validate(&self, kind: FileKind) -> Result<(), SpecError> {
        validate_file_name(kind, &self.name)?;
        if self.labels.len() > MAX_LABELS {
            return Err(invalid(format!(
                "a {} has at most {MAX_LABELS} labels",
                kind.as_str()
            )));
        }
        if let Some(key) = self.labels.keys().find(|k| k.is_empty()) {
            return Err(invalid(format!("invalid label {key:?}: empty key")));
        }
        Ok(())
    }
}

/// A secret's or config's bytes. `Debug` says only how many there are; serde writes
/// them as base64. Shared, not copied, by clones (the state is cloned for each change it
/// may refuse, and every assignment that needs a file carries it).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct FileData(Arc<[u8]>);

impl FileData {
    /// The bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// How many bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for FileData {
    fn from(bytes: Vec<u8>) -> Self {
        Self(bytes.into())
    }
}

impl fmt::Debug for FileData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileData(<{} bytes>)", self.0.len())
    }
}

impl Serialize for FileData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for FileData {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        STANDARD
            .decode(text)
            .map(Self::from)
            .map_err(serde::de::Error::custom)
    }
}

/// A secret or config as the managers keep it (in the replicated state; a secret's
/// data is sealed at rest with the Raft store, see `docs/secrets.md`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Its ID.
    pub id: FileId,
    /// Name and labels.
    pub spec: FileSpec,
    /// Its bytes; immutable.
    pub data: FileData,
    /// Bumped by each change (labels), as docker's `Version.Index`.
    pub version: u64,
    /// Leader's clock at creation, ms since the epoch.
    pub created_at_ms: u64,
    /// Leader's clock at the last change.
    pub updated_at_ms: u64,
}

impl StoredFile {
    /// A new secret or config, checked.
    ///
    /// # Errors
    /// A bad name or labels, empty or oversized data.
    pub fn new(
        kind: FileKind,
        id: FileId,
        spec: FileSpec,
        data: FileData,
        at_ms: u64,
    ) -> Result<Self, SpecError> {
        spec.validate(kind)?;
        validate_file_data(kind, data.as_bytes())?;
        Ok(Self {
            id,
            spec,
            data,
            version: 1,
            created_at_ms: at_ms,
            updated_at_ms: at_ms,
        })
    }

    /// What the API shows of it: a config's data, never a secret's.
    #[must_use]
    pub fn info(&self, kind: FileKind) -> FileInfo {
        FileInfo {
            id: self.id,
            spec: self.spec.clone(),
            data: (kind == FileKind::Config).then(|| self.data.clone()),
            size: self.data.len(),
            version: self.version,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }
}

/// A secret or config as `secret ls`/`inspect` and `config ls`/`inspect` see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    /// Its ID.
    pub id: FileId,
    /// Name and labels.
    pub spec: FileSpec,
    /// A config's bytes; `None` for a secret (no API returns them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<FileData>,
    /// How many bytes it holds.
    pub size: usize,
    /// Bumped by each change.
    pub version: u64,
    /// Creation, ms since the epoch.
    pub created_at_ms: u64,
    /// Last change, ms since the epoch.
    pub updated_at_ms: u64,
}

/// A secret's or config's bytes as an agent receives them: only while a task of its
/// node that references it is to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    /// Which secret or config.
    pub id: FileId,
    /// Its name, by which the tasks' specs reference it.
    pub name: String,
    /// Its bytes.
    pub data: FileData,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_base64_in_json_and_never_in_debug() {
        let data = FileData::from(b"hunter2\n\0\xff".to_vec());
        let json = serde_json::to_string(&data).unwrap();
        assert_eq!(json, "\"aHVudGVyMgoA/w==\"");
        assert_eq!(serde_json::from_str::<FileData>(&json).unwrap(), data);
        assert_eq!(format!("{data:?}"), "FileData(<10 bytes>)");
        let stored = StoredFile::new(
            FileKind::Secret,
            7,
            FileSpec {
                name: "db_pass".into(),
                labels: BTreeMap::new(),
            },
            data,
            1,
        )
        .unwrap();
        assert!(!format!("{stored:?}").contains("hunter2"));
        assert!(serde_json::from_str::<FileData>("\"not base64!\"").is_err());
    }

    #[test]
    fn a_secret_shows_no_data_a_config_does() {
        let spec = FileSpec {
            name: "app.conf".into(),
            labels: BTreeMap::new(),
        };
        let data = FileData::from(b"port = 80\n".to_vec());
        let file = StoredFile::new(FileKind::Config, 1, spec, data.clone(), 5).unwrap();
        assert_eq!(file.info(FileKind::Config).data, Some(data));
        let secret = file.info(FileKind::Secret);
        assert_eq!((secret.data.is_none(), secret.size), (true, 10));
        assert!(!serde_json::to_string(&secret).unwrap().contains("data"));
    }

    #[test]
    fn bad_names_labels_and_sizes_are_refused() {
        let spec = |name: &str| FileSpec {
            name: name.into(),
            labels: BTreeMap::new(),
        };
        let data = |n: usize| FileData::from(vec![b'x'; n]);
        let new = |kind, spec, data| StoredFile::new(kind, 1, spec, data, 0);
        assert!(new(FileKind::Secret, spec("a b"), data(1)).is_err());
        assert!(new(FileKind::Secret, spec("ok"), data(0)).is_err());
        assert!(new(FileKind::Secret, spec("ok"), data(500 * 1024 + 1)).is_err());
        assert!(new(FileKind::Secret, spec("ok"), data(500 * 1024)).is_ok());
        assert!(new(FileKind::Config, spec("ok"), data(1000 * 1024)).is_ok());
        let mut labelled = spec("ok");
        labelled.labels.insert(String::new(), "v".into());
        assert!(new(FileKind::Config, labelled, data(1)).is_err());
    }
}
