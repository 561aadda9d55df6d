//! The task-level keys of docker's `ContainerSpec` beyond the program and its
//! confinement: the hostname (`--hostname`), extra `/etc/hosts` lines (`--add-host`,
//! docker's `--host`), the DNS configuration (`--dns`, `--dns-search`, `--dns-option`),
//! the working directory (`--workdir`) and container labels (`--container-label`).
//! Parsers for what a user types, and the checks [`crate::spec::ServiceSpec::validate`]
//! applies, in docker's words where docker has them. Sans-IO.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, invalid};

/// The longest hostname the kernel takes (`HOST_NAME_MAX`).
pub const MAX_HOSTNAME_LEN: usize = 64;
/// The most extra hosts (`--add-host`) a service may have.
pub const MAX_EXTRA_HOSTS: usize = 256;
/// The most DNS servers (glibc's `MAXNS`).
pub const MAX_NAMESERVERS: usize = 3;
/// The most search domains (glibc's `MAXDNSRCH`).
pub const MAX_SEARCH: usize = 6;
/// The most resolver options.
pub const MAX_OPTIONS: usize = 16;
/// The most container labels.
pub const MAX_LABELS: usize = 256;
/// The longest working directory, entrypoint word or label.
pub const MAX_TEXT_LEN: usize = 4096;

/// A task's DNS configuration (docker's `DNSConfig`): what its `/etc/resolv.conf` says
/// besides the mesh's resolver. The servers are where the mesh's resolver forwards the
/// names it does not answer, for this task (Swarm's embedded resolver does the same);
/// the search domains and options go to the task's `resolv.conf`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsConfig {
    /// `--dns`: the task's upstream servers, instead of the node's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<IpAddr>,
    /// `--dns-search`: the `search` line (instead of the node's domains).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// `--dns-option`: `options` words (`ndots:2`, `timeout:1`, `rotate`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl DnsConfig {
    /// Whether it sets nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.search.is_empty() && self.options.is_empty()
    }

    /// Checks the counts and each value.
    ///
    /// # Errors
    /// The first bad value, in docker's words.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.nameservers.len() > MAX_NAMESERVERS {
            return Err(invalid(format!(
                "at most {MAX_NAMESERVERS} DNS servers (--dns)"
            )));
        }
        if self.search.len() > MAX_SEARCH {
            return Err(invalid(format!(
                "at most {MAX_SEARCH} DNS search domains (--dns-search)"
            )));
        }
        if self.options.len() > MAX_OPTIONS {
            return Err(invalid(format!(
                "at most {MAX_OPTIONS} DNS options (--dns-option)"
            )));
        }
        for domain in &self.search {
            validate_dns_search(domain)?;
        }
        for option in &self.options {
            validate_dns_option(option)?;
        }
        Ok(())
    }
}

/// Parses a DNS server (`--dns`), as docker's `ValidateIPAddress`.
///
/// # Errors
/// `"x" is not an ip address`.
pub fn parse_nameserver(value: &str) -> Result<IpAddr, SpecError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(format!("{} is not an ip address", value.trim())))
}

/// Checks a search domain (`--dns-search`) as docker's `ValidateDNSSearch`: `.` (no
/// search), or a domain of labels of letters, digits and `-`, at most 255 characters.
///
/// # Errors
/// `x is not a valid domain`.
pub fn validate_dns_search(domain: &str) -> Result<(), SpecError> {
    let d = domain.trim_end_matches('.');
    let ok = domain == "."
        || (!d.is_empty()
            && d.len() <= 255
            && d.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            }));
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{domain} is not a valid domain")))
    }
}

/// Checks a resolver option (`--dns-option`): one word, printable, no blanks.
///
/// # Errors
/// Why it is refused.
pub fn validate_dns_option(option: &str) -> Result<(), SpecError> {
    if option.is_empty()
        || option.len() > 64
        || option.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        Err(invalid(format!(
            "invalid DNS option {option:?}: one word such as ndots:2"
        )))
    } else {
        Ok(())
    }
}

/// Checks a hostname (`--hostname`): at most [`MAX_HOSTNAME_LEN`] characters, labels
/// of letters, digits, `-` and `_`, separated by dots. Template placeholders
/// (`{{.Task.Slot}}`) are checked by [`crate::template::check`] and the rest of the
/// text here; the expanded name is checked again where it is expanded.
///
/// # Errors
/// `invalid hostname "x": ...`.
pub fn validate_hostname(hostname: &str) -> Result<(), SpecError> {
    crate::template::check(hostname).map_err(|e| invalid(format!("hostname: {e}")))?;
    let text = crate::template::strip(hostname);
    let templated = text.len() != hostname.len();
    let ok = !hostname.is_empty()
        && (templated || hostname.len() <= MAX_HOSTNAME_LEN)
        && (templated || !(text.starts_with(['-', '.']) || text.ends_with(['-', '.'])))
        && !text.contains("..")
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "invalid hostname {hostname:?}: letters, digits, '-' and '_' in dot-separated \
             labels, at most {MAX_HOSTNAME_LEN} characters"
        )))
    }
}

/// An extra `/etc/hosts` line (`--host host:ip`), as docker's `ValidateExtraHost`
/// takes it: `host:ip` or `host=ip`, the address possibly in brackets (`[::1]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraHost {
    /// The name.
    pub host: String,
    /// Its address.
    pub ip: IpAddr,
}

impl ExtraHost {
    /// Parses `host:ip` (or `host=ip`).
    ///
    /// # Errors
    /// `bad format for add-host: "x"`, or `invalid IP address in add-host: "x"`.
    pub fn parse(value: &str) -> Result<Self, SpecError> {
        let bad = || invalid(format!("bad format for add-host: {value:?}"));
        let (host, ip) = value
            .split_once('=')
            .or_else(|| value.split_once(':'))
            .ok_or_else(bad)?;
        let host = host.trim();
        if host.is_empty()
            || host.len() > 255
            || host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '#')
        {
            return Err(bad());
        }
        let ip = ip.trim();
        let bare = ip
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(ip);
        let ip = bare
            .parse::<IpAddr>()
            .map_err(|_| invalid(format!("invalid IP address in add-host: {ip:?}")))?;
        Ok(Self {
            host: host.to_owned(),
            ip,
        })
    }

    /// The `/etc/hosts` line: `IP\tHOST`.
    #[must_use]
    pub fn hosts_line(&self) -> String {
        format!("{}\t{}", self.ip, self.host)
    }
}

impl std::fmt::Display for ExtraHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.ip)
    }
}

/// Checks a working directory (`--workdir`): an absolute path (the daemon's words).
///
/// # Errors
/// `the working directory 'x' is invalid, it needs to be an absolute path`.
pub fn validate_workdir(dir: &str) -> Result<(), SpecError> {
    if dir.starts_with('/') && dir.len() <= MAX_TEXT_LEN && !dir.contains('\0') {
        Ok(())
    } else {
        Err(invalid(format!(
            "the working directory '{dir}' is invalid, it needs to be an absolute path"
        )))
    }
}

/// Checks container labels (`--container-label`): at most [`MAX_LABELS`], keys not
/// empty.
///
/// # Errors
/// Why they are refused.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), SpecError> {
    if labels.len() > MAX_LABELS {
        return Err(invalid(format!("at most {MAX_LABELS} container labels")));
    }
    for (k, v) in labels {
        if k.trim().is_empty() {
            return Err(invalid("invalid container label: an empty key"));
        }
        if k.len() + v.len() > MAX_TEXT_LEN {
            return Err(invalid(format!("container label {k:?} is too long")));
        }
    }
    Ok(())
}

/// The `/etc/hosts` a task gets: localhost's lines, its hostname at its own address
/// (as docker's), then its extra hosts in order.
#[must_use]
pub fn hosts_file(hostname: &str, addr: IpAddr, extra: &[ExtraHost]) -> String {
    let mut text = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n",
    );
    text.push_str(&format!("{addr}\t{hostname}\n"));
    for host in extra {
        text.push_str(&host.hosts_line());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_hosts_as_docker_takes_them() {
        let h = ExtraHost::parse("db:10.0.0.5").unwrap();
        assert_eq!(
            (h.host.as_str(), h.ip.to_string()),
            ("db", "10.0.0.5".into())
        );
        assert_eq!(h.to_string(), "db:10.0.0.5");
        assert_eq!(h.hosts_line(), "10.0.0.5\tdb");
        assert_eq!(ExtraHost::parse("v6=::1").unwrap().ip.to_string(), "::1");
        assert_eq!(ExtraHost::parse("v6:[::1]").unwrap().ip.to_string(), "::1");
        assert_eq!(
            ExtraHost::parse("x").unwrap_err().to_string(),
            "bad format for add-host: \"x\""
        );
        assert_eq!(
            ExtraHost::parse("db:nope").unwrap_err().to_string(),
            "invalid IP address in add-host: \"nope\""
        );
        assert!(ExtraHost::parse(":1.2.3.4").is_err());
    }

    #[test]
    fn dns_values_as_docker_checks_them() {
        assert_eq!(parse_nameserver("1.1.1.1").unwrap().to_string(), "1.1.1.1");
        assert_eq!(
            parse_nameserver("x").unwrap_err().to_string(),
            "x is not an ip address"
        );
        validate_dns_search("example.com").unwrap();
        validate_dns_search(".").unwrap();
        assert_eq!(
            validate_dns_search("-bad.com").unwrap_err().to_string(),
            "-bad.com is not a valid domain"
        );
        validate_dns_option("ndots:2").unwrap();
        assert!(validate_dns_option("a b").is_err());
        let mut dns = DnsConfig::default();
        assert!(dns.is_empty());
        dns.nameservers = vec!["1.1.1.1".parse().unwrap(); 4];
        assert!(dns.validate().is_err());
    }

    #[test]
    fn hostnames_and_workdirs() {
        validate_hostname("web-1.local").unwrap();
        validate_hostname("web-{{.Task.Slot}}").unwrap();
        validate_hostname("{{ .Node.Hostname }}-{{.Service.Name}}").unwrap();
        assert!(validate_hostname("").is_err());
        assert!(validate_hostname("a b").is_err());
        assert!(validate_hostname("-a").is_err());
        assert!(validate_hostname(&"a".repeat(65)).is_err());
        assert!(
            validate_hostname("web-{{.Task.Nope}}")
                .unwrap_err()
                .to_string()
                .contains("hostname")
        );
        validate_workdir("/srv").unwrap();
        assert_eq!(
            validate_workdir("srv").unwrap_err().to_string(),
            "the working directory 'srv' is invalid, it needs to be an absolute path"
        );
    }

    #[test]
    fn hosts_file_maps_the_hostname_and_extras() {
        let text = hosts_file(
            "web-1",
            "10.0.1.5".parse().unwrap(),
            &[ExtraHost::parse("db:10.0.0.5").unwrap()],
        );
        assert!(text.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(text.contains("\n10.0.1.5\tweb-1\n10.0.0.5\tdb\n"));
    }
}
