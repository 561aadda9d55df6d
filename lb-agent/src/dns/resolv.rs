//! `resolv.conf`, both ways: the node's, read for the upstream servers and search
//! domains, and the one a task gets (`nameserver 169.254.1.1`, `options ndots:0`, the
//! node's search domains).

use std::net::{IpAddr, SocketAddr};

/// At most this many upstream servers are used (glibc's `MAXNS`, Swarm's `maxExtDNS`).
pub const MAX_UPSTREAMS: usize = 3;

/// The node's resolver configuration, as far as the tasks' resolver cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines, port 53, at most [`MAX_UPSTREAMS`].
    pub nameservers: Vec<SocketAddr>,
    /// The last `search` (or `domain`) line's domains.
    pub search: Vec<String>,
}

impl ResolvConf {
    /// Parses `resolv.conf` text as glibc does: comments (`#`, `;`) and unknown lines
    /// ignored, unparseable nameservers skipped, the last `search`/`domain` line wins.
    #[must_use]
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scope (`fe80::1%eth0`) is not supported: skipped.
                    if let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok())
                        && conf.nameservers.len() < MAX_UPSTREAMS
                    {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("search" | "domain") => {
                    conf.search = words
                        .take_while(|w| !w.starts_with(['#', ';']))
                        .map(str::to_owned)
                        .collect();
                }
                _ => {}
            }
        }
        conf
    }

    /// Reads and parses `path`; an absent or unreadable file is an empty configuration.
    #[must_use]
    pub fn read(path: &std::path::Path) -> Self {
        std::fs::read_to_string(path)
            .map(|t| Self::parse(&t))
            .unwrap_or_default()
    }
}

/// Parses an upstream server, `IP` or `IP:PORT` (`[IPv6]:PORT`); port 53 by default.
///
/// # Errors
/// A message naming the bad value.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("invalid DNS upstream {s:?}: expected IP or IP:PORT"))
}

/// The `resolv.conf` a task gets: `nameserver`, `search` (the node's domains, if any)
/// and `options ndots:0` (a dotted name such as `tasks.web` is tried as it is first).
#[must_use]
pub fn task_resolv_conf(nameserver: IpAddr, search: &[String]) -> String {
    task_resolv_conf_with(&[nameserver], search, &[])
}

/// The `resolv.conf` of a task with its own DNS settings (`--dns-search`,
/// `--dns-option`): `nameservers`, `search` (the task's domains; `.` alone: none),
/// and `options` (`ndots:0` unless the task's options set `ndots`, then the task's).
#[must_use]
pub fn task_resolv_conf_with(
    nameservers: &[IpAddr],
    search: &[String],
    options: &[String],
) -> String {
    let mut text = String::new();
    for nameserver in nameservers {
        text.push_str(&format!("nameserver {nameserver}\n"));
    }
    let search: Vec<&str> = search
        .iter()
        .map(String::as_str)
        .filter(|d| *d != ".")
        .collect();
    if !search.is_empty() {
        text.push_str(&format!("search {}\n", search.join(" ")));
    }
    let mut words: Vec<&str> = Vec::new();
    if !options.iter().any(|o| o.starts_with("ndots:")) {
        words.push("ndots:0");
    }
    words.extend(options.iter().map(String::as_str));
    text.push_str(&format!("options {}\n", words.join(" ")));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_resolv_conf_gives_three_servers_and_the_last_search() {
        let conf = ResolvConf::parse(
            "# generated\nnameserver 10.0.0.2\n; comment\nnameserver ::1\nnameserver bogus\n\
             search a.example b.example\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n\
             options edns0\ndomain c.example # trailing\n",
        );
        assert_eq!(
            conf.nameservers,
            [
                "10.0.0.2:53".parse().unwrap(),
                "[::1]:53".parse().unwrap(),
                "10.0.0.3:53".parse().unwrap(),
            ]
        );
        assert_eq!(conf.search, ["c.example"]);
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
        assert_eq!(
            ResolvConf::read(std::path::Path::new("/nonexistent/resolv.conf")),
            ResolvConf::default()
        );
    }

    #[test]
    fn upstreams_take_an_optional_port() {
        assert_eq!(parse_upstream("1.1.1.1"), Ok("1.1.1.1:53".parse().unwrap()));
        assert_eq!(
            parse_upstream(" 1.1.1.1:5353 "),
            Ok("1.1.1.1:5353".parse().unwrap())
        );
        assert_eq!(parse_upstream("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(parse_upstream("[::1]:54"), Ok("[::1]:54".parse().unwrap()));
        let err = parse_upstream("dns.example").unwrap_err();
        assert!(
            err.contains("dns.example") && err.contains("IP:PORT"),
            "{err}"
        );
        assert!(parse_upstream("1.1.1.1:99999").is_err());
    }

    #[test]
    fn a_tasks_resolv_conf_names_the_gateway() {
        let gw = IpAddr::from([169, 254, 1, 1]);
        assert_eq!(
            task_resolv_conf(gw, &[]),
            "nameserver 169.254.1.1\noptions ndots:0\n"
        );
        assert_eq!(
            task_resolv_conf(gw, &["a.example".into(), "b.example".into()]),
            "nameserver 169.254.1.1\nsearch a.example b.example\noptions ndots:0\n"
        );
        assert_eq!(
            task_resolv_conf_with(
                &[gw],
                &["svc.example".into()],
                &["ndots:2".into(), "timeout:1".into()]
            ),
            "nameserver 169.254.1.1\nsearch svc.example\noptions ndots:2 timeout:1\n"
        );
        assert_eq!(
            task_resolv_conf_with(&[gw], &[".".into()], &["rotate".into()]),
            "nameserver 169.254.1.1\noptions ndots:0 rotate\n"
        );
    }
}
