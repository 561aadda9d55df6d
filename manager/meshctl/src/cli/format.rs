//! `--format`: docker's tables, or JSON for scripts; `--filter name=`, as `ls` verbs
//! take it.

/// How a listing or an inspection is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, as docker prints them.
    Table,
    /// JSON.
    Json,
}

/// The values of `ls --filter name=VALUE` (docker's name filter: names containing one of
/// them; none: every name).
///
/// # Errors
/// A filter other than `name=...`.
pub fn name_filters(filters: &[String]) -> Result<Vec<String>, super::flags::FlagError> {
    filters
        .iter()
        .map(|filter| match filter.split_once('=') {
            Some(("name", value)) => Ok(value.to_string()),
            _ => Err(super::flags::FlagError::new(format!(
                "invalid filter {filter:?}: only name=NAME is supported"
            ))),
        })
        .collect()
}

/// Whether `name` passes the name filters `names` (see [`name_filters`]).
#[must_use]
pub fn name_passes(name: &str, names: &[String]) -> bool {
    names.is_empty() || names.iter().any(|v| name.contains(v.as_str()))
}
