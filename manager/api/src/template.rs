//! Swarm's per-task placeholders (swarmkit `template/context.go`) in a task's
//! hostname, environment values and mount sources and targets: `{{.Service.ID}}`,
//! `{{.Service.Name}}`, `{{.Task.ID}}`, `{{.Task.Name}}`, `{{.Task.Slot}}`,
//! `{{.Node.ID}}` and `{{.Node.Hostname}}`, with blanks allowed inside the braces
//! (`{{ .Task.Slot }}`). [`check`] refuses any other `{{...}}` when a spec is validated,
//! so a spec a node cannot expand never reaches one; [`expand`] fills them in on the
//! node that starts the task. Sans-IO.

/// What a placeholder names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    ServiceId,
    ServiceName,
    TaskId,
    TaskName,
    TaskSlot,
    NodeId,
    NodeHostname,
}

/// The placeholders, as written between the braces.
const FIELDS: [(&str, Field); 7] = [
    (".Service.ID", Field::ServiceId),
    (".Service.Name", Field::ServiceName),
    (".Task.ID", Field::TaskId),
    (".Task.Name", Field::TaskName),
    (".Task.Slot", Field::TaskSlot),
    (".Node.ID", Field::NodeId),
    (".Node.Hostname", Field::NodeHostname),
];

/// Why a template is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{{` without its `}}`.
    #[error("unclosed action in template {0:?}")]
    Unclosed(String),
    /// A placeholder this mesh does not know.
    #[error(
        "unknown template placeholder {{{{{0}}}}}: expected one of {{{{.Service.ID}}}}, \
         {{{{.Service.Name}}}}, {{{{.Task.ID}}}}, {{{{.Task.Name}}}}, {{{{.Task.Slot}}}}, \
         {{{{.Node.ID}}}}, {{{{.Node.Hostname}}}}"
    )]
    Unknown(String),
}

/// The values a task's placeholders take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// The service's ID (16 hex digits).
    pub service_id: String,
    /// The service's name.
    pub service_name: String,
    /// The task's ID (16 hex digits).
    pub task_id: String,
    /// The task's name (`web.3`).
    pub task_name: String,
    /// The task's slot (a global task's: 0, as Swarm's).
    pub task_slot: u32,
    /// The node's ID (16 hex digits).
    pub node_id: String,
    /// The node's hostname.
    pub node_hostname: String,
}

impl Context {
    fn value(&self, field: Field) -> String {
        match field {
            Field::ServiceId => self.service_id.clone(),
            Field::ServiceName => self.service_name.clone(),
            Field::TaskId => self.task_id.clone(),
            Field::TaskName => self.task_name.clone(),
            Field::TaskSlot => self.task_slot.to_string(),
            Field::NodeId => self.node_id.clone(),
            Field::NodeHostname => self.node_hostname.clone(),
        }
    }
}

/// One piece of a template.
enum Piece<'a> {
    Text(&'a str),
    Field(Field),
}

fn parse(text: &str) -> Result<Vec<Piece<'_>>, TemplateError> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        pieces.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| TemplateError::Unclosed(text.to_owned()))?;
        let inner = after[..end].trim();
        let field = FIELDS
            .iter()
            .find(|(name, _)| *name == inner)
            .map(|(_, f)| *f)
            .ok_or_else(|| TemplateError::Unknown(inner.to_owned()))?;
        pieces.push(Piece::Field(field));
        rest = &after[end + 2..];
    }
    pieces.push(Piece::Text(rest));
    Ok(pieces)
}

/// Whether `text` holds a placeholder (`{{`).
#[must_use]
pub fn is_template(text: &str) -> bool {
    text.contains("{{")
}

/// Checks that every `{{...}}` of `text` is a known placeholder.
///
/// # Errors
/// An unclosed `{{`, or a placeholder this mesh does not know.
pub fn check(text: &str) -> Result<(), TemplateError> {
    parse(text).map(|_| ())
}

/// `text` with its placeholders taken out (what is left must be valid on its own);
/// `text` itself if it does not parse.
#[must_use]
pub fn strip(text: &str) -> String {
    match parse(text) {
        Ok(pieces) => pieces
            .into_iter()
            .filter_map(|p| match p {
                Piece::Text(t) => Some(t),
                Piece::Field(_) => None,
            })
            .collect(),
        Err(_) => text.to_owned(),
    }
}

/// `text` with its placeholders filled in from `cx`.
///
/// # Errors
/// As [`check`].
pub fn expand(text: &str, cx: &Context) -> Result<String, TemplateError> {
    if !is_template(text) {
        return Ok(text.to_owned());
    }
    Ok(parse(text)?
        .into_iter()
        .map(|p| match p {
            Piece::Text(t) => t.to_owned(),
            Piece::Field(f) => cx.value(f),
        })
        .collect())
}

/// `spec` as task `cx` runs it: the placeholders of its hostname, environment values
/// and mount sources and targets filled in (Swarm's fields), and its hostname, when it has none, the
/// first 12 hex digits of its task ID (as docker names a container after its ID).
///
/// # Errors
/// A placeholder [`check`] refuses, or an expanded hostname or volume name that is not
/// valid (naming the field).
pub fn expand_task(
    spec: &crate::spec::TaskSpec,
    cx: &Context,
) -> Result<crate::spec::TaskSpec, String> {
    let mut spec = spec.clone();
    let hostname = match &spec.hostname {
        Some(h) => expand(h, cx).map_err(|e| format!("hostname: {e}"))?,
        None => cx.task_id.chars().take(12).collect(),
    };
    crate::container::validate_hostname(&hostname).map_err(|e| e.to_string())?;
    spec.hostname = Some(hostname);
    for var in &mut spec.env {
        if let Some((key, value)) = var.split_once('=')
            && is_template(value)
        {
            let value =
                expand(value, cx).map_err(|e| format!("environment variable {key}: {e}"))?;
            *var = format!("{key}={value}");
        }
    }
    for mount in &mut spec.mounts {
        if is_template(&mount.source) || is_template(&mount.target) {
            mount.source = expand(&mount.source, cx)
                .map_err(|e| format!("mount source {:?}: {e}", mount.source))?;
            mount.target = expand(&mount.target, cx)
                .map_err(|e| format!("mount target {:?}: {e}", mount.target))?;
            mount.validate().map_err(|e| e.to_string())?;
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context {
        Context {
            service_id: "00000000000000aa".into(),
            service_name: "web".into(),
            task_id: "00000000000000bb".into(),
            task_name: "web.3".into(),
            task_slot: 3,
            node_id: "00000000000000cc".into(),
            node_hostname: "n1".into(),
        }
    }

    #[test]
    fn expands_every_placeholder_as_swarm() {
        let text = "{{.Service.ID}} {{.Service.Name}} {{.Task.ID}} {{.Task.Name}} \
                    {{ .Task.Slot }} {{.Node.ID}} {{  .Node.Hostname}}";
        assert_eq!(
            expand(text, &cx()).unwrap(),
            "00000000000000aa web 00000000000000bb web.3 3 00000000000000cc n1"
        );
        assert_eq!(expand("web-{{.Task.Slot}}", &cx()).unwrap(), "web-3");
        assert_eq!(expand("plain }} text", &cx()).unwrap(), "plain }} text");
        assert_eq!(strip("a{{.Task.Slot}}b"), "ab");
    }

    #[test]
    fn a_task_spec_is_expanded_for_its_task() {
        let mut spec = crate::spec::ServiceSpec::new(
            "web",
            crate::spec::RuntimeKind::Process,
            "sleep",
            vec![],
        )
        .task;
        spec.env = vec!["SLOT={{.Task.Slot}}".into(), "BAD={{x".into()];
        spec.mounts = vec![
            "type=volume,source=data-{{.Task.Slot}},target=/d/{{.Task.Slot}}"
                .parse()
                .unwrap(),
        ];
        let mut plain = spec.clone();
        spec.hostname = Some("{{.Service.Name}}-{{.Task.Slot}}".into());
        // A bad placeholder (which validation refuses first) fails the expansion.
        assert!(
            expand_task(&spec, &cx())
                .unwrap_err()
                .starts_with("environment variable BAD: unclosed")
        );
        spec.env.pop();
        let expanded = expand_task(&spec, &cx()).unwrap();
        assert_eq!(expanded.hostname.as_deref(), Some("web-3"));
        assert_eq!(expanded.env, ["SLOT=3"]);
        assert_eq!(expanded.mounts[0].source, "data-3");
        assert_eq!(expanded.mounts[0].target, "/d/3");
        plain.env.clear();
        let unnamed = expand_task(&plain, &cx()).unwrap();
        assert_eq!(unnamed.hostname.as_deref(), Some("000000000000"));
        plain.hostname = Some("{{.Node.Hostname}}".into());
        let mut bad = cx();
        bad.node_hostname = "a b".into();
        assert!(
            expand_task(&plain, &bad)
                .unwrap_err()
                .contains("invalid hostname")
        );
    }

    #[test]
    fn refuses_unknown_and_unclosed_placeholders() {
        assert_eq!(
            check("{{.Service.Labels}}").unwrap_err(),
            TemplateError::Unknown(".Service.Labels".into())
        );
        assert!(
            check("x{{.Task.Nope}}")
                .unwrap_err()
                .to_string()
                .starts_with("unknown template placeholder {{.Task.Nope}}")
        );
        assert_eq!(
            check("web-{{.Task.Slot").unwrap_err(),
            TemplateError::Unclosed("web-{{.Task.Slot".into())
        );
        assert!(check("{{}}").is_err());
        check("no placeholders").unwrap();
    }
}
