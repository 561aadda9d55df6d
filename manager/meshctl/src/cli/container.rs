//! The flags of a task's container settings, docker's names: `--hostname`, `--add-host`
//! (docker's `service create --host`: meshctl's `--host` names the manager),
//! `--dns`, `--dns-search`, `--dns-option`, `--workdir`, `--container-label` and
//! `--entrypoint` for `service create`, and their `-add`/`-rm` forms for `service
//! update`. Each value is checked as it is parsed, with docker's
//! `invalid argument "x" for "--add-host" flag: ...` wording.

use clap::Args;
use mesh_api::container::{
    ExtraHost, parse_nameserver, validate_dns_option, validate_dns_search, validate_hostname,
    validate_workdir,
};
use mesh_api::node::parse_label;
use mesh_api::spec::{SpecError, TaskSpec};

use super::flags::{FlagError, split_args};

/// Docker's (cobra's) wording for a bad flag value.
fn bad(flag: &str, value: &str, e: &dyn std::fmt::Display) -> FlagError {
    FlagError::new(format!(
        "invalid argument {value:?} for \"--{flag}\" flag: {e}"
    ))
}

fn hosts(flag: &str, values: &[String]) -> Result<Vec<String>, FlagError> {
    values
        .iter()
        .map(|v| {
            ExtraHost::parse(v)
                .map(|h| h.to_string())
                .map_err(|e| bad(flag, v, &e))
        })
        .collect()
}

fn nameservers(flag: &str, values: &[String]) -> Result<Vec<std::net::IpAddr>, FlagError> {
    values
        .iter()
        .map(|v| parse_nameserver(v).map_err(|e| bad(flag, v, &e)))
        .collect()
}

fn checked(
    flag: &str,
    values: &[String],
    check: fn(&str) -> Result<(), SpecError>,
) -> Result<Vec<String>, FlagError> {
    values
        .iter()
        .map(|v| check(v).map(|()| v.clone()).map_err(|e| bad(flag, v, &e)))
        .collect()
}

fn labels(
    flag: &str,
    values: &[String],
    into: &mut std::collections::BTreeMap<String, String>,
) -> Result<(), FlagError> {
    for value in values {
        let (k, v) = parse_label(value).map_err(|e| bad(flag, value, &e))?;
        into.insert(k, v);
    }
    Ok(())
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, items: Vec<T>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// `service create`'s container flags.
#[derive(Clone, Debug, Default, Args)]
pub struct ContainerFlags {
    /// Container hostname (may use {{.Task.Slot}} and Swarm's other placeholders).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Add a custom host-to-IP mapping (host:ip). Docker's `service create --host`;
    /// here `--add-host` (`docker run`'s name), as meshctl's `-H/--host` names the
    /// manager.
    #[arg(long, value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// Set custom DNS servers.
    #[arg(long, value_name = "IP")]
    pub dns: Vec<String>,
    /// Set custom DNS search domains.
    #[arg(long, value_name = "DOMAIN")]
    pub dns_search: Vec<String>,
    /// Set DNS options.
    #[arg(long, value_name = "OPTION")]
    pub dns_option: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Container labels (key=value).
    #[arg(long, value_name = "KEY=VALUE")]
    pub container_label: Vec<String>,
    /// Overwrite the default ENTRYPOINT of the image (docker runtime).
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
}

impl ContainerFlags {
    /// Sets the task's container settings from the flags.
    ///
    /// # Errors
    /// The first bad value, naming its flag.
    pub fn apply(&self, task: &mut TaskSpec) -> Result<(), FlagError> {
        if let Some(hostname) = &self.hostname {
            validate_hostname(hostname).map_err(|e| bad("hostname", hostname, &e))?;
            task.hostname = Some(hostname.clone());
        }
        task.hosts = hosts("add-host", &self.add_host)?;
        task.dns.nameservers = nameservers("dns", &self.dns)?;
        task.dns.search = checked("dns-search", &self.dns_search, validate_dns_search)?;
        task.dns.options = checked("dns-option", &self.dns_option, validate_dns_option)?;
        if let Some(dir) = &self.workdir {
            validate_workdir(dir).map_err(|e| bad("workdir", dir, &e))?;
            task.workdir = Some(dir.clone());
        }
        labels(
            "container-label",
            &self.container_label,
            &mut task.container_labels,
        )?;
        if let Some(entrypoint) = &self.entrypoint {
            task.entrypoint = split_args(entrypoint)?;
        }
        Ok(())
    }
}

/// `service update`'s container flags: `""` clears `--hostname`, `--workdir` and
/// `--entrypoint`; the lists change by `-add` and `-rm`, as docker's.
#[derive(Clone, Debug, Default, Args)]
pub struct ContainerUpdateFlags {
    /// Container hostname ("" for the default: the task ID's first 12 digits).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Add a custom host-to-IP mapping (host:ip).
    #[arg(long, value_name = "HOST:IP")]
    pub host_add: Vec<String>,
    /// Remove a custom host-to-IP mapping (host:ip, or host for all of its).
    #[arg(long, value_name = "HOST[:IP]")]
    pub host_rm: Vec<String>,
    /// Add or update a custom DNS server.
    #[arg(long, value_name = "IP")]
    pub dns_add: Vec<String>,
    /// Remove a custom DNS server.
    #[arg(long, value_name = "IP")]
    pub dns_rm: Vec<String>,
    /// Add or update a custom DNS search domain.
    #[arg(long, value_name = "DOMAIN")]
    pub dns_search_add: Vec<String>,
    /// Remove a DNS search domain.
    #[arg(long, value_name = "DOMAIN")]
    pub dns_search_rm: Vec<String>,
    /// Add or update a DNS option.
    #[arg(long, value_name = "OPTION")]
    pub dns_option_add: Vec<String>,
    /// Remove a DNS option.
    #[arg(long, value_name = "OPTION")]
    pub dns_option_rm: Vec<String>,
    /// Working directory inside the container ("" for the default).
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Add or update a container label (key=value).
    #[arg(long, value_name = "KEY=VALUE")]
    pub container_label_add: Vec<String>,
    /// Remove a container label by its key.
    #[arg(long, value_name = "KEY")]
    pub container_label_rm: Vec<String>,
    /// Overwrite the default ENTRYPOINT of the image ("" for the image's own).
    #[arg(long, value_name = "COMMAND", allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
}

impl ContainerUpdateFlags {
    /// Changes the task's container settings as the flags ask (removals first, as
    /// docker).
    ///
    /// # Errors
    /// The first bad value, naming its flag.
    pub fn apply(&self, task: &mut TaskSpec) -> Result<(), FlagError> {
        if let Some(hostname) = &self.hostname {
            if hostname.is_empty() {
                task.hostname = None;
            } else {
                validate_hostname(hostname).map_err(|e| bad("hostname", hostname, &e))?;
                task.hostname = Some(hostname.clone());
            }
        }
        for value in &self.host_rm {
            if value.contains([':', '=']) {
                let gone = ExtraHost::parse(value)
                    .map_err(|e| bad("host-rm", value, &e))?
                    .to_string();
                task.hosts.retain(|h| *h != gone);
            } else {
                task.hosts
                    .retain(|h| ExtraHost::parse(h).map_or(true, |e| e.host != *value));
            }
        }
        push_new(&mut task.hosts, hosts("host-add", &self.host_add)?);
        let gone = nameservers("dns-rm", &self.dns_rm)?;
        task.dns.nameservers.retain(|n| !gone.contains(n));
        push_new(
            &mut task.dns.nameservers,
            nameservers("dns-add", &self.dns_add)?,
        );
        task.dns.search.retain(|d| !self.dns_search_rm.contains(d));
        push_new(
            &mut task.dns.search,
            checked("dns-search-add", &self.dns_search_add, validate_dns_search)?,
        );
        task.dns.options.retain(|o| !self.dns_option_rm.contains(o));
        push_new(
            &mut task.dns.options,
            checked("dns-option-add", &self.dns_option_add, validate_dns_option)?,
        );
        if let Some(dir) = &self.workdir {
            if dir.is_empty() {
                task.workdir = None;
            } else {
                validate_workdir(dir).map_err(|e| bad("workdir", dir, &e))?;
                task.workdir = Some(dir.clone());
            }
        }
        for key in &self.container_label_rm {
            task.container_labels.remove(key);
        }
        labels(
            "container-label-add",
            &self.container_label_add,
            &mut task.container_labels,
        )?;
        if let Some(entrypoint) = &self.entrypoint {
            task.entrypoint = split_args(entrypoint)?;
        }
        Ok(())
    }
}
