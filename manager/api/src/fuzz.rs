//! Property tests of the decoders: no bytes a peer sends and no text a user types make
//! them panic. `cargo test` runs 256 cases each; `cargo xtask fuzz parsers` runs them
//! with many more (`PROPTEST_CASES`).

use proptest::prelude::*;

use crate::assignment::Assignment;
use crate::node::parse_label;
use crate::proto;
use crate::spec::{
    Constraint, PortSpec, RestartCondition, ServiceMode, ServiceSpec, parse_duration_ms,
};

/// A valid spec's JSON with `edits` applied (a byte set at an offset, or the text cut
/// there), so most inputs are nearly valid.
fn edited_spec_json(edits: &[(usize, u8, bool)]) -> Vec<u8> {
    let mut spec = ServiceSpec::new(
        "web",
        crate::spec::RuntimeKind::Process,
        "/usr/bin/task-echo",
        vec!["--port".into(), "80".into()],
    );
    spec.mode = ServiceMode::Replicated { replicas: 3 };
    spec.endpoint
        .ports
        .push("8080:80".parse().expect("a valid port"));
    spec.task.restart.condition = RestartCondition::OnFailure;
    spec.task.user = Some("nobody:nogroup".into());
    spec.task.cap_add = vec!["CAP_NET_ADMIN".into()];
    spec.task.cap_drop = vec!["ALL".into()];
    spec.task.mounts = vec![
        "type=bind,source=/srv,target=/data,readonly"
            .parse()
            .expect("a valid mount"),
        "type=tmpfs,target=/t,tmpfs-size=1m"
            .parse()
            .expect("a valid mount"),
    ];
    spec.task.hostname = Some("web-{{.Task.Slot}}".into());
    spec.task.hosts = vec!["db:10.0.0.5".into()];
    spec.task.dns.search = vec!["example.com".into()];
    spec.task.workdir = Some("/srv".into());
    spec.task.env = vec!["SLOT={{ .Task.Slot }}".into()];
    spec.task.resources.limits.memory_bytes = 64 << 20;
    spec.task.resources.reservations.nano_cpus = 500_000_000;
    let mut bytes = serde_json::to_vec(&spec).expect("a spec encodes");
    for &(at, byte, cut) in edits {
        if bytes.is_empty() {
            break;
        }
        let at = at % bytes.len();
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] = byte;
        }
    }
    bytes
}

proptest! {
    #[test]
    fn fuzz_wire_decoders_never_panic_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(spec) = (proto::CreateServiceRequest { spec_json: bytes.clone() }).spec() {
            let _ = spec.validate();
        }
        let _ = serde_json::from_slice::<Assignment>(&bytes);
        let _ = serde_json::from_slice::<crate::service::Service>(&bytes);
        let _ = serde_json::from_slice::<crate::task::Task>(&bytes);
    }

    #[test]
    fn fuzz_spec_decoder_never_panics_on_edited_specs(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), proptest::bool::weighted(0.05)), 1..8)
    ) {
        let bytes = edited_spec_json(&edits);
        if let Ok(spec) = (proto::CreateServiceRequest { spec_json: bytes }).spec() {
            let _ = spec.validate();
        }
    }

    #[test]
    fn fuzz_user_text_parsers_never_panic(text in ".{0,64}") {
        let _ = parse_duration_ms(&text);
        let _ = text.parse::<PortSpec>();
        let _ = text.parse::<Constraint>();
        let _ = parse_label(&text);
        let _ = crate::spec::validate_name(&text);
        let _ = crate::spec::validate_user(&text);
        let _ = crate::resources::parse_nano_cpus(&text);
        let _ = crate::resources::parse_memory_bytes(&text);
        let _ = crate::capability::canonical(&text);
        let _ = crate::capability::resolve(std::slice::from_ref(&text), std::slice::from_ref(&text));
        for kind in [crate::file_ref::FileKind::Secret, crate::file_ref::FileKind::Config] {
            let _ = crate::file_ref::FileRef::parse(kind, &text);
        }
        let _ = crate::mount::Mount::parse(&text);
        let _ = crate::mount::parse_ram_bytes(&text);
        let _ = text.parse::<crate::spec::PlacementPreference>();
        let _ = crate::container::ExtraHost::parse(&text);
        let _ = crate::container::parse_nameserver(&text);
        let _ = crate::container::validate_dns_search(&text);
        let _ = crate::container::validate_hostname(&text);
        let _ = crate::container::validate_workdir(&text);
        let _ = crate::template::check(&text);
        let _ = crate::template::expand(&text, &crate::template::Context::default());
    }

    #[test]
    fn fuzz_durations_never_overflow(n in any::<u64>(), unit in prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h", "h1h", "m30s"])) {
        let _ = parse_duration_ms(&format!("{n}{unit}"));
    }

    #[test]
    fn fuzz_resource_units_never_overflow(n in any::<u64>(), f in any::<u64>(), unit in prop::sample::select(vec!["", "b", "k", "M", "g", "TiB", "p", "pb"])) {
        let _ = crate::resources::parse_memory_bytes(&format!("{n}{unit}"));
        let _ = crate::resources::parse_memory_bytes(&format!("{n}.{f}{unit}"));
        let _ = crate::resources::parse_nano_cpus(&format!("{n}.{f}"));
    }
}
