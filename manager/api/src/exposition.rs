//! The Prometheus exposition formats `/metrics` answers in, shared by the
//! agent and the managers: content negotiation as the Prometheus client
//! libraries do it, and the text format 0.0.4 made from the OpenMetrics text
//! that `prometheus-client` encodes. Pure string work, tested without I/O.
//!
//! - [`negotiate`]: OpenMetrics only when the `Accept` header asks for
//!   `application/openmetrics-text` (and prefers it to `text/plain`), else
//!   the text format 0.0.4, which every scraper and `promtool check metrics`
//!   read.
//! - [`openmetrics_to_text`]: the same samples in the text format. The two
//!   differ in the metadata of counters: OpenMetrics names the family `foo`
//!   and its samples `foo_total`; the text format names both `foo_total`, so
//!   that `# HELP` and `# TYPE` describe the series that exist. `# UNIT`
//!   lines and the closing `# EOF` have no place in the text format, and
//!   `unknown` is called `untyped` there.

/// The `Content-Type` of the text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The `Content-Type` of OpenMetrics 1.0.0.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The media type that selects OpenMetrics in an `Accept` header.
const OPENMETRICS_MEDIA_TYPE: &str = "application/openmetrics-text";

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of an answer in this format.
    #[must_use]
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Text => TEXT_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The format to answer a request whose `Accept` header is `accept` in:
/// OpenMetrics when the header lists `application/openmetrics-text` with a
/// non-zero quality at least as high as any other acceptable type's (as
/// Prometheus sends it: OpenMetrics first, `text/plain` at `q=0.5`), else
/// the text format (no header, `*/*`, `text/plain`, anything unknown).
#[must_use]
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Text;
    };
    let mut openmetrics = 0.0_f32;
    let mut other = 0.0_f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
        if media == OPENMETRICS_MEDIA_TYPE {
            openmetrics = openmetrics.max(q);
        } else if media == "text/plain" {
            other = other.max(q);
        }
    }
    if openmetrics > 0.0 && openmetrics >= other {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// The body and its `Content-Type` in `format`, from the OpenMetrics text
/// `prometheus-client` encoded.
#[must_use]
pub fn render(openmetrics: String, format: Format) -> (&'static str, String) {
    match format {
        Format::OpenMetrics => (OPENMETRICS_CONTENT_TYPE, openmetrics),
        Format::Text => (TEXT_CONTENT_TYPE, openmetrics_to_text(&openmetrics)),
    }
}

/// The text format 0.0.4 of OpenMetrics text (see the module's
/// documentation): counter families are renamed `<name>_total` in their
/// `# HELP` and `# TYPE` lines, `unknown` becomes `untyped`, `# UNIT` and
/// `# EOF` are dropped, and `\"` in help texts is unescaped (the text
/// format escapes only `\` and newlines there). Samples are kept as they
/// are.
#[must_use]
pub fn openmetrics_to_text(openmetrics: &str) -> String {
    // Families whose type is counter: their HELP comes before their TYPE.
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let (name, kind) = rest.split_once(' ')?;
            (kind.trim() == "counter").then_some(name)
        })
        .collect();
    let family = |name: &str| -> String {
        if counters.contains(name) && !name.ends_with("_total") {
            format!("{name}_total")
        } else {
            name.to_owned()
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str("# HELP ");
            out.push_str(&family(name));
            out.push(' ');
            out.push_str(&help.replace("\\\"", "\""));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let kind = match kind.trim() {
                "unknown" => "untyped",
                "info" | "stateset" | "gaugehistogram" => "gauge",
                other => other,
            };
            out.push_str("# TYPE ");
            out.push_str(&family(name));
            out.push(' ');
            out.push_str(kind);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Format, negotiate, openmetrics_to_text, render};

    #[test]
    fn openmetrics_only_when_asked_for() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(negotiate(Some("text/plain;version=0.0.4")), Format::Text);
        assert_eq!(negotiate(Some("application/json")), Format::Text);
        assert_eq!(negotiate(Some("")), Format::Text);
        assert_eq!(
            negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        // What Prometheus 2.x sends.
        assert_eq!(
            negotiate(Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            )),
            Format::OpenMetrics
        );
        // A scraper configured for the text format.
        assert_eq!(
            negotiate(Some(
                "text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"
            )),
            Format::Text
        );
        assert_eq!(
            negotiate(Some("Application/OpenMetrics-Text; q=0")),
            Format::Text
        );
    }

    const OPENMETRICS: &str = "\
# HELP lb_config_reloads Configuration loads, by \\\"result\\\".
# TYPE lb_config_reloads counter
lb_config_reloads_total{result=\"success\"} 1
# HELP lb_flows Entries of the flow table.
# TYPE lb_flows gauge
lb_flows{proto=\"tcp\"} 3
# HELP x_seconds A histogram.
# TYPE x_seconds histogram
# UNIT x_seconds seconds
x_seconds_sum 0.5
x_seconds_count 1
x_seconds_bucket{le=\"+Inf\"} 1
# HELP odd Who knows.
# TYPE odd unknown
odd 1
# EOF
";

    #[test]
    fn counters_are_described_under_their_total_names() {
        let text = openmetrics_to_text(OPENMETRICS);
        assert_eq!(
            text,
            "\
# HELP lb_config_reloads_total Configuration loads, by \"result\".
# TYPE lb_config_reloads_total counter
lb_config_reloads_total{result=\"success\"} 1
# HELP lb_flows Entries of the flow table.
# TYPE lb_flows gauge
lb_flows{proto=\"tcp\"} 3
# HELP x_seconds A histogram.
# TYPE x_seconds histogram
x_seconds_sum 0.5
x_seconds_count 1
x_seconds_bucket{le=\"+Inf\"} 1
# HELP odd Who knows.
# TYPE odd untyped
odd 1
"
        );
    }

    #[test]
    fn render_picks_the_body_and_content_type() {
        let (ct, body) = render(OPENMETRICS.to_owned(), Format::OpenMetrics);
        assert!(ct.starts_with("application/openmetrics-text"));
        assert!(body.ends_with("# EOF\n"));
        let (ct, body) = render(OPENMETRICS.to_owned(), Format::Text);
        assert!(ct.starts_with("text/plain; version=0.0.4"));
        assert!(!body.contains("# EOF"));
    }
}
