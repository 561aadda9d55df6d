//! Secrets and configs in the cluster state: creating and removing them, finding one by
//! what a user typed, what keeps one from being removed, and which of them a node's
//! tasks need (the only ones its agent receives).
//!
//! Services reference them by name ([`mesh_api::file_ref::FileRef::source`]). Names are
//! unique per kind, data is immutable, and one cannot be removed while a service (or
//! the previous spec a rollback returns to, or a task still running) references it, so
//! a name keeps meaning the same bytes for as long as any task may need them.

use std::collections::BTreeSet;

use mesh_api::assignment::AssignedTask;
use mesh_api::file::{FileContent, FileData, FileId, FileInfo, FileSpec, StoredFile};
use mesh_api::file_ref::{FileKind, FileRef};
use mesh_api::node::format_id;
use mesh_api::spec::{ServiceSpec, TaskSpec};

use crate::state::{Applied, ClusterState, Response, StateError};

/// The references of `spec` to files of `kind`.
fn refs(spec: &TaskSpec, kind: FileKind) -> &[FileRef] {
    match kind {
        FileKind::Secret => &spec.secrets,
        FileKind::Config => &spec.configs,
    }
}

impl ClusterState {
    /// The secrets or the configs, by ID.
    #[must_use]
    pub fn files(&self, kind: FileKind) -> &std::collections::BTreeMap<FileId, StoredFile> {
        match kind {
            FileKind::Secret => &self.stored_secrets,
            FileKind::Config => &self.stored_configs,
        }
    }

    fn files_mut(&mut self, kind: FileKind) -> &mut std::collections::BTreeMap<FileId, StoredFile> {
        match kind {
            FileKind::Secret => &mut self.stored_secrets,
            FileKind::Config => &mut self.stored_configs,
        }
    }

    pub(crate) fn create_file(
        &mut self,
        kind: FileKind,
        spec: &FileSpec,
        data: &FileData,
        at_ms: u64,
    ) -> Response {
        spec.validate(kind)
            .and_then(|()| mesh_api::file_ref::validate_file_data(kind, data.as_bytes()))
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        if self.files(kind).values().any(|f| f.spec.name == spec.name) {
            return Err(StateError::FileExists(kind, spec.name.clone()));
        }
        let mut id = self.fresh_id();
        while self.files(kind).contains_key(&id) {
            id = self.fresh_id();
        }
        let file = StoredFile::new(kind, id, spec.clone(), data.clone(), at_ms)
            .expect("checked above, before the ID was drawn");
        let info = file.info(kind);
        self.files_mut(kind).insert(id, file);
        Ok(Applied::File(Box::new(info)))
    }

    pub(crate) fn remove_file(&mut self, kind: FileKind, id: FileId) -> Response {
        let name = self
            .files(kind)
            .get(&id)
            .ok_or_else(|| StateError::UnknownFile(kind, format_id(id)))?
            .spec
            .name
            .clone();
        if let Some(user) = self.file_user(kind, &name) {
            return Err(StateError::FileInUse { kind, name, user });
        }
        self.files_mut(kind).remove(&id);
        Ok(Applied::Done)
    }

    /// Resolves what a user typed: a full ID, a name, or a unique ID prefix (in that
    /// order, as docker does).
    ///
    /// # Errors
    /// [`StateError::UnknownFile`] or [`StateError::AmbiguousFile`].
    pub fn resolve_file(&self, kind: FileKind, name: &str) -> Result<FileId, StateError> {
        let name = name.trim();
        let files = self.files(kind);
        if name.is_empty() {
            return Err(StateError::Invalid(format!(
                "a {} name is required",
                kind.as_str()
            )));
        }
        if let Some(id) = files.keys().find(|id| format_id(**id) == name) {
            return Ok(*id);
        }
        if let Some(file) = files.values().find(|f| f.spec.name == name) {
            return Ok(file.id);
        }
        let by_prefix: Vec<FileId> = files
            .keys()
            .filter(|id| format_id(**id).starts_with(name))
            .copied()
            .collect();
        match by_prefix.as_slice() {
            [id] => Ok(*id),
            [] => Err(StateError::UnknownFile(kind, name.to_string())),
            many => Err(StateError::AmbiguousFile(
                kind,
                name.to_string(),
                many.len(),
            )),
        }
    }

    /// What keeps the secret or config `name` from being removed, worded for the user
    /// (`service api`), if anything: a service's spec, the previous spec a rollback
    /// returns to, or a task that has not ended.
    #[must_use]
    pub fn file_user(&self, kind: FileKind, name: &str) -> Option<String> {
        let uses = |spec: &TaskSpec| refs(spec, kind).iter().any(|r| r.source == name);
        self.user_of(": ", uses, |t| uses(&t.spec))
    }

    /// Checks that every secret and config `spec` references exists.
    ///
    /// # Errors
    /// [`StateError::UnknownFile`] for the first that does not.
    pub(crate) fn check_file_refs(&self, spec: &ServiceSpec) -> Result<(), StateError> {
        for kind in [FileKind::Secret, FileKind::Config] {
            for reference in refs(&spec.task, kind) {
                if !self
                    .files(kind)
                    .values()
                    .any(|f| f.spec.name == reference.source)
                {
                    return Err(StateError::UnknownFile(kind, reference.source.clone()));
                }
            }
        }
        Ok(())
    }

    /// The bytes of the secrets or configs that `tasks` (a node's assignment) reference
    /// from the tasks it is to run, and of no other.
    #[must_use]
    pub fn files_for(&self, kind: FileKind, tasks: &[AssignedTask]) -> Vec<FileContent> {
        let names: BTreeSet<&str> = tasks
            .iter()
            .filter(|t| t.action == mesh_api::assignment::TaskAction::Run)
            .flat_map(|t| refs(&t.spec, kind))
            .map(|r| r.source.as_str())
            .collect();
        self.files(kind)
            .values()
            .filter(|f| names.contains(f.spec.name.as_str()))
            .map(|f| FileContent {
                id: f.id,
                name: f.spec.name.clone(),
                data: f.data.clone(),
            })
            .collect()
    }

    /// What the API shows of every secret or config, by name.
    #[must_use]
    pub fn file_infos(&self, kind: FileKind) -> Vec<FileInfo> {
        let mut all: Vec<FileInfo> = self.files(kind).values().map(|f| f.info(kind)).collect();
        all.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        all
    }
}

#[cfg(test)]
mod tests {
    use mesh_api::spec::RuntimeKind;
    use mesh_api::task::DesiredState;

    use super::*;
    use crate::assignment::for_node;
    use crate::state::testing::{create_service, create_tasks, ready};
    use crate::state::{Command, TaskChange};

    fn create(state: &mut ClusterState, kind: FileKind, name: &str, data: &[u8]) -> Response {
        state.apply(&Command::CreateFile {
            kind,
            spec: FileSpec {
                name: name.into(),
                labels: std::collections::BTreeMap::new(),
            },
            data: FileData::from(data.to_vec()),
            at_ms: 1,
        })
    }

    fn spec_with(secret: &str, config: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new("api", RuntimeKind::Process, "/bin/true", vec![]);
        spec.task.secrets = vec![FileRef::parse(FileKind::Secret, secret).unwrap()];
        spec.task.configs = vec![FileRef::parse(FileKind::Config, config).unwrap()];
        spec
    }

    #[test]
    fn a_secret_is_created_once_by_name_and_shown_without_its_data() {
        let mut state = ready(&[1]);
        let Ok(Applied::File(info)) = create(&mut state, FileKind::Secret, "pw", b"hunter2") else {
            panic!("not created")
        };
        assert_eq!((info.spec.name.as_str(), info.size), ("pw", 7));
        assert_eq!(info.data, None);
        let before = state.clone();
        assert_eq!(
            create(&mut state, FileKind::Secret, "pw", b"other")
                .unwrap_err()
                .to_string(),
            "secret pw already exists"
        );
        let too_big = vec![b'x'; 500 * 1024 + 1];
        assert!(create(&mut state, FileKind::Secret, "big", &too_big).is_err());
        assert_eq!(state, before, "refusals change nothing");
        // The same name is free among configs, whose data the API shows.
        let Ok(Applied::File(config)) = create(&mut state, FileKind::Config, "pw", b"x") else {
            panic!("not created")
        };
        assert_eq!(
            config.data.map(|d| d.as_bytes().to_vec()),
            Some(b"x".to_vec())
        );
        assert_eq!(state.resolve_file(FileKind::Secret, "pw").unwrap(), info.id);
        assert_eq!(
            state
                .resolve_file(FileKind::Secret, &format_id(info.id)[..6])
                .unwrap(),
            info.id
        );
        assert_eq!(
            state
                .resolve_file(FileKind::Secret, "nope")
                .unwrap_err()
                .to_string(),
            "secret not found: nope"
        );
    }

    #[test]
    fn services_need_existing_files_and_keep_them_from_removal() {
        let mut state = ready(&[1]);
        create(&mut state, FileKind::Secret, "pw", b"hunter2").unwrap();
        let refused = state
            .apply(&Command::CreateService {
                spec: spec_with("pw", "app.conf"),
                at_ms: 1,
            })
            .unwrap_err();
        assert_eq!(refused.to_string(), "config not found: app.conf");
        create(&mut state, FileKind::Config, "app.conf", b"port=80").unwrap();
        let service = create_service(&mut state, spec_with("pw", "app.conf"));
        let id = state.resolve_file(FileKind::Secret, "pw").unwrap();
        let before = state.clone();
        assert_eq!(
            state
                .apply(&Command::RemoveFile {
                    kind: FileKind::Secret,
                    id
                })
                .unwrap_err()
                .to_string(),
            "secret 'pw' is in use by the following service: api"
        );
        assert_eq!(state, before);
        // Rotated away, the old secret is still what a rollback returns to.
        create(&mut state, FileKind::Secret, "pw2", b"new").unwrap();
        let mut rotated = service.spec.clone();
        rotated.task.secrets =
            vec![FileRef::parse(FileKind::Secret, "source=pw2,target=pw").unwrap()];
        state
            .apply(&Command::UpdateService {
                id: service.id,
                spec: rotated,
                rollback: false,
                expected_version: None,
                at_ms: 2,
            })
            .unwrap();
        assert!(
            state
                .file_user(FileKind::Secret, "pw")
                .unwrap()
                .contains("previous spec")
        );
        state
            .apply(&Command::RemoveService {
                id: service.id,
                at_ms: 3,
            })
            .unwrap();
        assert_eq!(state.file_user(FileKind::Secret, "pw"), None);
        state
            .apply(&Command::RemoveFile {
                kind: FileKind::Secret,
                id,
            })
            .unwrap();
        assert!(state.resolve_file(FileKind::Secret, "pw").is_err());
    }

    #[test]
    fn only_nodes_with_a_task_to_run_receive_a_file() {
        let mut state = ready(&[1, 2, 3]);
        create(&mut state, FileKind::Secret, "pw", b"hunter2").unwrap();
        create(&mut state, FileKind::Secret, "unused", b"zzz").unwrap();
        create(&mut state, FileKind::Config, "app.conf", b"port=80").unwrap();
        let service = create_service(&mut state, spec_with("pw", "app.conf"));
        let tasks = create_tasks(&mut state, service.id, &[Some(1), Some(2)]);
        let on_1 = for_node(&state, 1, 0);
        assert_eq!(on_1.secrets.len(), 1);
        assert_eq!(on_1.secrets[0].name, "pw");
        assert_eq!(on_1.secrets[0].data.as_bytes(), b"hunter2");
        assert_eq!(on_1.configs[0].data.as_bytes(), b"port=80");
        let on_3 = for_node(&state, 3, 0);
        assert!(on_3.secrets.is_empty() && on_3.configs.is_empty());
        // A task being stopped needs nothing more.
        state
            .apply(&Command::ChangeTasks {
                create: vec![],
                update: vec![TaskChange {
                    id: tasks[1],
                    desired: Some(DesiredState::Shutdown),
                    ..TaskChange::default()
                }],
                delete: vec![],
                at_ms: 3,
            })
            .unwrap();
        assert!(for_node(&state, 2, 0).secrets.is_empty());
        assert!(
            !format!("{:?}", for_node(&state, 1, 0)).contains("hunter2"),
            "an assignment's Debug hides the data"
        );
    }
}
