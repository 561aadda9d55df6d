//! Stacks in the cluster state: a deploy ([`StackDeploy`]) applied as one command, all
//! or nothing, so that a file with a fault (a port another stack publishes, a secret
//! whose content changed, an external network that does not exist) changes nothing.
//!
//! A deploy creates what is missing, keeps what exists as the file describes it, updates
//! the services whose spec changed (a rolling update when their tasks change) and, with
//! `prune`, removes the stack's services the file no longer has. Objects belong to a
//! stack by their [`LABEL_NAMESPACE`] label, which the deploy sets on every object it
//! creates; an object of the same name that belongs to no stack, or to another, is
//! never taken over.

use mesh_api::file_ref::FileKind;
use mesh_api::network::NetworkSpec;
use mesh_api::spec::ServiceSpec;
use mesh_api::stack::{
    Change, Deployed, ExternalObject, LABEL_NAMESPACE, ObjectKind, StackDeploy, StackDeployed,
    StackFile, namespace_of,
};

use crate::state::{Applied, ClusterState, Response, StateError};

/// `err` about one object of the stack, unless it already names it.
fn about(kind: ObjectKind, name: &str) -> impl FnOnce(StateError) -> StateError {
    let object = format!("{kind} {name}");
    move |err| match err {
        StateError::NotInStack { .. } | StateError::FileChanged { .. } => err,
        err => StateError::InStack {
            object,
            source: Box::new(err),
        },
    }
}

impl ClusterState {
    /// Applies a stack deploy: externals checked, then networks, secrets and configs,
    /// services, and the pruned services, on a copy that replaces the state only if
    /// every step succeeds.
    pub(crate) fn deploy_stack(&mut self, deploy: &StackDeploy, at_ms: u64) -> Response {
        deploy
            .validate()
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        let ns = deploy.namespace.as_str();
        let mut next = self.clone();
        for external in &deploy.external {
            next.check_external(external)?;
        }
        let mut objects = Vec::new();
        for spec in &deploy.networks {
            let mut spec = spec.clone();
            spec.labels.insert(LABEL_NAMESPACE.into(), ns.into());
            let deployed = next
                .deploy_network(&spec, ns, at_ms)
                .map_err(about(ObjectKind::Network, &spec.name))?;
            objects.push(deployed);
        }
        for kind in [FileKind::Secret, FileKind::Config] {
            for file in deploy.files.iter().filter(|f| f.kind == kind) {
                let mut file = file.clone();
                file.spec.labels.insert(LABEL_NAMESPACE.into(), ns.into());
                let deployed = next
                    .deploy_file(&file, ns, at_ms)
                    .map_err(about(kind.into(), &file.spec.name))?;
                objects.push(deployed);
            }
        }
        for spec in &deploy.services {
            let mut spec = spec.clone();
            spec.labels.insert(LABEL_NAMESPACE.into(), ns.into());
            let deployed = next
                .deploy_service(&spec, ns, at_ms)
                .map_err(about(ObjectKind::Service, &spec.name))?;
            objects.push(deployed);
        }
        if deploy.prune {
            let stale: Vec<(u64, String)> = next
                .services
                .values()
                .filter(|s| namespace_of(&s.spec.labels) == Some(ns))
                .filter(|s| !deploy.services.iter().any(|p| p.name == s.spec.name))
                .map(|s| (s.id, s.spec.name.clone()))
                .collect();
            for (id, name) in stale {
                next.remove_service(id)?;
                objects.push(Deployed {
                    kind: ObjectKind::Service,
                    name,
                    id,
                    change: Change::Removed,
                    rolls: false,
                });
            }
        }
        *self = next;
        Ok(Applied::Stack(Box::new(StackDeployed { objects })))
    }

    /// Refuses a deploy whose external network, secret or config does not exist, in
    /// docker's words for a network.
    fn check_external(&self, external: &ExternalObject) -> Result<(), StateError> {
        let name = &external.name;
        let found = match external.kind {
            ObjectKind::Network => self.resolve_network(name).is_ok(),
            ObjectKind::Secret => self.resolve_file(FileKind::Secret, name).is_ok(),
            ObjectKind::Config => self.resolve_file(FileKind::Config, name).is_ok(),
            ObjectKind::Service => {
                return Err(StateError::Invalid(format!(
                    "service {name}: a service can't be external"
                )));
            }
        };
        if found {
            Ok(())
        } else {
            Err(StateError::MissingExternal(external.kind, name.clone()))
        }
    }

    fn deploy_network(
        &mut self,
        spec: &NetworkSpec,
        ns: &str,
        at_ms: u64,
    ) -> Result<Deployed, StateError> {
        let existing = self.networks.values().find(|n| n.spec.name == spec.name);
        let (id, change) = match existing {
            Some(network) => {
                owned(ObjectKind::Network, &spec.name, &network.spec.labels, ns)?;
                let change = if network.spec == *spec {
                    Change::Unchanged
                } else {
                    Change::Kept
                };
                (network.id, change)
            }
            None => match self.create_network(spec, at_ms)? {
                Applied::Network(network) => (network.id, Change::Created),
                _ => unreachable!("create_network returns the network"),
            },
        };
        Ok(Deployed {
            kind: ObjectKind::Network,
            name: spec.name.clone(),
            id,
            change,
            rolls: false,
        })
    }

    fn deploy_file(
        &mut self,
        file: &StackFile,
        ns: &str,
        at_ms: u64,
    ) -> Result<Deployed, StateError> {
        let kind = file.kind;
        let name = &file.spec.name;
        let existing = self.files(kind).values().find(|f| f.spec.name == *name);
        let (id, change) = match existing {
            Some(stored) => {
                owned(kind.into(), name, &stored.spec.labels, ns)?;
                if stored.data != file.data {
                    return Err(StateError::FileChanged {
                        kind,
                        name: name.clone(),
                    });
                }
                (stored.id, Change::Unchanged)
            }
            None => match self.create_file(kind, &file.spec, &file.data, at_ms)? {
                Applied::File(info) => (info.id, Change::Created),
                _ => unreachable!("create_file returns the file"),
            },
        };
        Ok(Deployed {
            kind: kind.into(),
            name: name.clone(),
            id,
            change,
            rolls: false,
        })
    }

    fn deploy_service(
        &mut self,
        spec: &ServiceSpec,
        ns: &str,
        at_ms: u64,
    ) -> Result<Deployed, StateError> {
        let existing = self.services.values().find(|s| s.spec.name == spec.name);
        let (id, change, rolls) = match existing {
            Some(current) => {
                owned(ObjectKind::Service, &spec.name, &current.spec.labels, ns)?;
                // A file has no `--force`: keep the counter, so that a deploy of the
                // same file after `service update --force` replaces no task.
                let mut spec = spec.clone();
                spec.task.force_update = current.spec.task.force_update;
                let id = current.id;
                let resolved = self.resolve_attachments(&spec)?;
                if resolved == current.spec {
                    (id, Change::Unchanged, false)
                } else {
                    let rolls = resolved.task != current.spec.task;
                    self.update_service(id, &spec, false, None, at_ms)?;
                    (id, Change::Updated, rolls)
                }
            }
            None => match self.create_service(spec, at_ms)? {
                Applied::Service(service) => (service.id, Change::Created, false),
                _ => unreachable!("create_service returns the service"),
            },
        };
        Ok(Deployed {
            kind: ObjectKind::Service,
            name: spec.name.clone(),
            id,
            change,
            rolls,
        })
    }
}

/// Refuses to take over an object that exists under a stack's name but belongs to no
/// stack, or to another.
fn owned(
    kind: ObjectKind,
    name: &str,
    labels: &std::collections::BTreeMap<String, String>,
    ns: &str,
) -> Result<(), StateError> {
    if namespace_of(labels) == Some(ns) {
        Ok(())
    } else {
        Err(StateError::NotInStack {
            object: format!("{kind} {name}"),
            owner: namespace_of(labels).map(str::to_owned),
            namespace: ns.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use mesh_api::file::{FileData, FileSpec};
    use mesh_api::file_ref::FileRef;
    use mesh_api::node::format_id;
    use mesh_api::spec::{NetworkAttachmentSpec, PortSpec, RuntimeKind, ServiceMode};
    use mesh_api::stack::ExternalObject;

    use super::*;
    use crate::state::Command;
    use crate::state::testing::ready;

    fn service(name: &str, network: &str) -> ServiceSpec {
        let mut spec =
            ServiceSpec::new(name, RuntimeKind::Process, "/bin/sleep", vec!["1d".into()]);
        spec.task.networks = vec![NetworkAttachmentSpec {
            target: network.into(),
            aliases: vec![name.rsplit('_').next().unwrap().into()],
        }];
        spec
    }

    fn secret(name: &str, data: &[u8]) -> StackFile {
        StackFile {
            kind: FileKind::Secret,
            spec: FileSpec {
                name: name.into(),
                labels: BTreeMap::new(),
            },
            data: FileData::from(data.to_vec()),
        }
    }

    /// Stack `app`: network `app_default`, secret `app_pw`, services `app_db` (with the
    /// secret) and `app_web` (publishing 8080).
    fn app() -> StackDeploy {
        let mut db = service("app_db", "app_default");
        db.task.secrets =
            vec![FileRef::parse(FileKind::Secret, "source=app_pw,target=pw").unwrap()];
        let mut web = service("app_web", "app_default");
        web.endpoint.ports = vec!["8080:80".parse::<PortSpec>().unwrap()];
        StackDeploy {
            namespace: "app".into(),
            networks: vec![NetworkSpec::new("app_default")],
            files: vec![secret("app_pw", b"s3cret")],
            external: Vec::new(),
            services: vec![db, web],
            prune: false,
        }
    }

    fn deploy(state: &mut ClusterState, deploy: &StackDeploy) -> Result<StackDeployed, StateError> {
        match state.apply(&Command::DeployStack {
            deploy: deploy.clone(),
            at_ms: 7,
        })? {
            Applied::Stack(deployed) => Ok(*deployed),
            other => panic!("{other:?}"),
        }
    }

    fn changes(deployed: &StackDeployed) -> Vec<(String, Change)> {
        deployed
            .objects
            .iter()
            .map(|o| (format!("{} {}", o.kind, o.name), o.change))
            .collect()
    }

    fn pairs(list: &[(&str, Change)]) -> Vec<(String, Change)> {
        list.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect()
    }

    #[test]
    fn a_first_deploy_creates_everything_labelled_with_the_stack() {
        let mut state = ready(&[1, 2]);
        let deployed = deploy(&mut state, &app()).unwrap();
        assert_eq!(
            changes(&deployed),
            pairs(&[
                ("network app_default", Change::Created),
                ("secret app_pw", Change::Created),
                ("service app_db", Change::Created),
                ("service app_web", Change::Created),
            ])
        );
        let label = |labels: &BTreeMap<String, String>| namespace_of(labels).map(str::to_owned);
        let network = state.networks.values().next().unwrap();
        assert_eq!(label(&network.spec.labels).as_deref(), Some("app"));
        let pw = state.files(FileKind::Secret).values().next().unwrap();
        assert_eq!(label(&pw.spec.labels).as_deref(), Some("app"));
        for s in state.services.values() {
            assert_eq!(label(&s.spec.labels).as_deref(), Some("app"));
            // The attachment is stored by ID, as for `service create --network`.
            assert_eq!(s.spec.task.networks[0].target, format_id(network.id));
        }
    }

    #[test]
    fn the_same_file_again_changes_nothing_and_a_change_updates_only_its_service() {
        let mut state = ready(&[1, 2]);
        deploy(&mut state, &app()).unwrap();
        let before = state.clone();
        let again = deploy(&mut state, &app()).unwrap();
        assert!(again.objects.iter().all(|o| o.change == Change::Unchanged));
        assert_eq!(state.services, before.services, "no spec version moved");

        // `service update --force` between deploys: the next deploy keeps the counter.
        let web = state.resolve_service("app_web").unwrap();
        let mut forced = state.service(web).unwrap().spec.clone();
        forced.task.force_update += 1;
        state
            .apply(&Command::UpdateService {
                id: web,
                spec: forced,
                rollback: false,
                expected_version: None,
                at_ms: 8,
            })
            .unwrap();
        let mut changed = app();
        changed.services[1].task.env = vec!["VERSION=2".into()];
        let deployed = deploy(&mut state, &changed).unwrap();
        assert_eq!(
            changes(&deployed),
            pairs(&[
                ("network app_default", Change::Unchanged),
                ("secret app_pw", Change::Unchanged),
                ("service app_db", Change::Unchanged),
                ("service app_web", Change::Updated),
            ])
        );
        assert!(deployed.objects[3].rolls);
        let web = state.service(web).unwrap();
        assert_eq!(web.spec.task.env, vec!["VERSION=2".to_owned()]);
        assert_eq!(web.spec.task.force_update, 1);
        assert_eq!(web.spec_version, 3);
    }

    #[test]
    fn prune_removes_only_the_stacks_services_the_file_dropped() {
        let mut state = ready(&[1, 2]);
        deploy(&mut state, &app()).unwrap();
        let mut other = app();
        other.namespace = "other".into();
        other.networks = vec![NetworkSpec::new("other_default")];
        other.files.clear();
        other.services = vec![service("other_web", "other_default")];
        deploy(&mut state, &other).unwrap();

        let mut smaller = app();
        smaller.services.truncate(1);
        let kept = deploy(&mut state, &smaller).unwrap();
        assert!(kept.objects.iter().all(|o| o.change == Change::Unchanged));
        assert!(state.resolve_service("app_web").is_ok(), "no --prune: kept");
        smaller.prune = true;
        let pruned = deploy(&mut state, &smaller).unwrap();
        assert_eq!(
            changes(&pruned).last().unwrap(),
            &("service app_web".to_owned(), Change::Removed)
        );
        assert!(state.resolve_service("app_web").is_err());
        assert!(
            state.resolve_service("other_web").is_ok(),
            "another stack's"
        );
    }

    /// Every refusal leaves the state exactly as it was, its ID counter included,
    /// however far the deploy got.
    fn refused(state: &mut ClusterState, bad: &StackDeploy) -> String {
        let before = state.clone();
        let err = deploy(state, bad).unwrap_err().to_string();
        assert_eq!(*state, before, "{err}");
        err
    }

    #[test]
    fn a_changed_secret_is_refused_with_how_to_rotate_it() {
        let mut state = ready(&[1, 2]);
        deploy(&mut state, &app()).unwrap();
        let mut changed = app();
        changed.files = vec![secret("app_pw", b"other")];
        changed.services[1].task.env = vec!["VERSION=2".into()];
        let err = refused(&mut state, &changed);
        assert!(
            err.starts_with("secret app_pw already exists with other content")
                && err.contains("`name: app_pw_v2`"),
            "{err}"
        );
    }

    #[test]
    fn a_port_another_stack_publishes_refuses_the_whole_deploy() {
        let mut state = ready(&[1, 2]);
        deploy(&mut state, &app()).unwrap();
        let mut other = app();
        other.namespace = "other".into();
        other.networks = vec![NetworkSpec::new("other_default")];
        other.files = vec![secret("other_pw", b"x")];
        other.services[0] = service("other_db", "other_default");
        other.services[1] = service("other_web", "other_default");
        other.services[1].endpoint.ports = vec!["8080:80".parse::<PortSpec>().unwrap()];
        let err = refused(&mut state, &other);
        assert!(err.starts_with("service other_web: "), "{err}");
        assert!(err.contains("8080"), "{err}");
        assert!(state.resolve_network("other_default").is_err());
    }

    #[test]
    fn missing_externals_and_objects_of_others_are_refused() {
        let mut state = ready(&[1, 2]);
        let mut bad = app();
        bad.external = vec![ExternalObject {
            kind: ObjectKind::Network,
            name: "outside".into(),
        }];
        assert_eq!(
            refused(&mut state, &bad),
            "network \"outside\" is declared as external, but could not be found. You need \
             to create a swarm-scoped network before the stack is deployed"
        );
        bad.external[0].kind = ObjectKind::Secret;
        assert!(refused(&mut state, &bad).starts_with("secret \"outside\" is declared"));

        // A service created by hand under a stack's name is not taken over.
        let mut by_hand = service("app_web", "");
        by_hand.task.networks.clear();
        crate::state::testing::create_service(&mut state, by_hand);
        assert_eq!(
            refused(&mut state, &app()),
            "service app_web already exists and is not part of stack app"
        );
        let mut other = app();
        other.namespace = "other".into();
        other.services.clear();
        other.files.clear();
        let mut fresh = ready(&[1]);
        let mut first = app();
        first.services.clear();
        deploy(&mut fresh, &first).unwrap();
        assert_eq!(
            refused(&mut fresh, &other),
            "network app_default already exists and is not part of stack other (it is part \
             of stack app)"
        );
    }

    #[test]
    fn an_invalid_object_is_named() {
        let mut state = ready(&[1, 2]);
        let mut bad = app();
        bad.services[1].mode = ServiceMode::Replicated { replicas: 100_000 };
        let err = refused(&mut state, &bad);
        assert!(err.starts_with("service app_web: "), "{err}");
        let mut bad = app();
        bad.namespace = "my app".into();
        assert!(refused(&mut state, &bad).contains("invalid stack name"));
    }
}
