//! `--format`: docker's tables, or JSON for scripts.

/// How a listing or an inspection is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns, as docker prints them.
    Table,
    /// JSON.
    Json,
}
