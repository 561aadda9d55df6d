//! `meshctl service create` and `meshctl service update`'s flags (docker's
//! names and syntax), and how they build a new spec or change an existing
//! one. Every value is checked here, before anything is sent: a bad flag
//! changes nothing.

use clap::{Args, ValueEnum};

use mesh_api::mount::Mount;
use mesh_api::node::parse_label;
use mesh_api::spec::{
    Constraint, EndpointMode, FailureAction, HealthCheck, LbAlgorithm, PlacementPreference,
    PortSpec, RestartCondition, RuntimeKind, ServiceMode, ServiceSpec, SpecError, UpdateConfig,
    UpdateOrder, parse_duration_ms,
};

/// Why a flag was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FlagError(String);

impl From<SpecError> for FlagError {
    fn from(err: SpecError) -> Self {
        Self(err.to_string())
    }
}

impl FlagError {
    /// A refusal worded for the user.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

fn refuse<T>(message: impl Into<String>) -> Result<T, FlagError> {
    Err(FlagError(message.into()))
}

/// `--mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ModeFlag {
    /// A number of tasks (`--replicas`, default 1).
    #[default]
    Replicated,
    /// One task on every eligible node.
    Global,
}

/// Restart, health-check, stop and update/rollback policy flags, shared by
/// `create` and `update`. Unset flags leave the spec's value alone.
#[derive(Clone, Debug, Default, Args)]
pub struct PolicyFlags {
    /// Restart when a task ends: any, on-failure or none.
    #[arg(long, value_name = "CONDITION")]
    pub restart_condition: Option<String>,
    /// Delay between restart attempts (e.g. 5s).
    #[arg(long, value_name = "DURATION")]
    pub restart_delay: Option<String>,
    /// Maximum number of restarts before giving up (0: unlimited).
    #[arg(long, value_name = "N")]
    pub restart_max_attempts: Option<u32>,
    /// Window used to evaluate the restart policy (e.g. 1m).
    #[arg(long, value_name = "DURATION")]
    pub restart_window: Option<String>,
    /// Command to run to check health (through /bin/sh -c).
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between running the check (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Maximum time to allow one check to run (e.g. 30s).
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy.
    #[arg(long, value_name = "N")]
    pub health_retries: Option<u32>,
    /// Start period for the task to initialize before failures count (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
    /// Disable the health check.
    #[arg(long, conflicts_with_all = ["health_cmd", "health_interval", "health_timeout", "health_retries", "health_start_period"])]
    pub no_healthcheck: bool,
    /// Time to wait before force killing a task (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    pub stop_grace_period: Option<String>,
    /// Maximum number of tasks updated simultaneously (0 to update all at once).
    #[arg(long, value_name = "N")]
    pub update_parallelism: Option<u32>,
    /// Delay between updates (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    pub update_delay: Option<String>,
    /// Action on update failure: pause, continue or rollback.
    #[arg(long, value_name = "ACTION")]
    pub update_failure_action: Option<String>,
    /// Duration after each task update to monitor for failure (e.g. 5s).
    #[arg(long, value_name = "DURATION")]
    pub update_monitor: Option<String>,
    /// Failure rate to tolerate during an update (0 to 1).
    #[arg(long, value_name = "RATIO")]
    pub update_max_failure_ratio: Option<f64>,
    /// Update order: start-first or stop-first.
    #[arg(long, value_name = "ORDER")]
    pub update_order: Option<String>,
    /// Maximum number of tasks rolled back simultaneously (0 to roll back all at once).
    #[arg(long, value_name = "N")]
    pub rollback_parallelism: Option<u32>,
    /// Delay between task rollbacks (e.g. 10s).
    #[arg(long, value_name = "DURATION")]
    pub rollback_delay: Option<String>,
    /// Action on rollback failure: pause or continue.
    #[arg(long, value_name = "ACTION")]
    pub rollback_failure_action: Option<String>,
    /// Duration after each task rollback to monitor for failure (e.g. 5s).
    #[arg(long, value_name = "DURATION")]
    pub rollback_monitor: Option<String>,
    /// Failure rate to tolerate during a rollback (0 to 1).
    #[arg(long, value_name = "RATIO")]
    pub rollback_max_failure_ratio: Option<f64>,
    /// Rollback order: start-first or stop-first.
    #[arg(long, value_name = "ORDER")]
    pub rollback_order: Option<String>,
}

fn duration(flag: &str, value: &str) -> Result<u64, FlagError> {
    parse_duration_ms(value).map_err(|e| FlagError(format!("--{flag}: {e}")))
}

fn ratio_permille(flag: &str, ratio: f64) -> Result<u32, FlagError> {
    if !(0.0..=1.0).contains(&ratio) {
        return refuse(format!(
            "--{flag}: invalid ratio {ratio}: expected a number between 0 and 1"
        ));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok((ratio * 1000.0).round() as u32)
}

/// One set of `--update-*` or `--rollback-*` flags.
struct PaceFlags<'a> {
    prefix: &'a str,
    parallelism: Option<u32>,
    delay: Option<&'a str>,
    failure_action: Option<&'a str>,
    monitor: Option<&'a str>,
    max_failure_ratio: Option<f64>,
    order: Option<&'a str>,
}

impl PaceFlags<'_> {
    fn apply(&self, config: &mut UpdateConfig) -> Result<(), FlagError> {
        let p = self.prefix;
        if let Some(n) = self.parallelism {
            config.parallelism = n;
        }
        if let Some(d) = self.delay {
            config.delay_ms = duration(&format!("{p}-delay"), d)?;
        }
        if let Some(action) = self.failure_action {
            let action = action
                .parse::<FailureAction>()
                .map_err(|e| FlagError(format!("--{p}-failure-action: {e}")))?;
            if p == "rollback" && action == FailureAction::Rollback {
                return refuse("--rollback-failure-action: expected pause or continue");
            }
            config.failure_action = action;
        }
        if let Some(d) = self.monitor {
            config.monitor_ms = duration(&format!("{p}-monitor"), d)?;
        }
        if let Some(r) = self.max_failure_ratio {
            config.max_failure_permille = ratio_permille(&format!("{p}-max-failure-ratio"), r)?;
        }
        if let Some(order) = self.order {
            config.order = order
                .parse::<UpdateOrder>()
                .map_err(|e| FlagError(format!("--{p}-order: {e}")))?;
        }
        Ok(())
    }
}

impl PolicyFlags {
    /// Applies the flags that are set to `spec`.
    ///
    /// # Errors
    /// A malformed value (naming its flag), or a health setting for a
    /// service without a health command.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), FlagError> {
        let restart = &mut spec.task.restart;
        if let Some(c) = &self.restart_condition {
            restart.condition = c
                .parse::<RestartCondition>()
                .map_err(|e| FlagError(format!("--restart-condition: {e}")))?;
        }
        if let Some(d) = &self.restart_delay {
            restart.delay_ms = duration("restart-delay", d)?;
        }
        if let Some(n) = self.restart_max_attempts {
            restart.max_attempts = n;
        }
        if let Some(d) = &self.restart_window {
            restart.window_ms = duration("restart-window", d)?;
        }
        if self.no_healthcheck {
            spec.task.health = None;
        }
        if let Some(cmd) = &self.health_cmd {
            match &mut spec.task.health {
                Some(health) => health.cmd.clone_from(cmd),
                None => spec.task.health = Some(HealthCheck::new(cmd.clone())),
            }
        }
        let tuning = [
            ("health-interval", self.health_interval.is_some()),
            ("health-timeout", self.health_timeout.is_some()),
            ("health-retries", self.health_retries.is_some()),
            ("health-start-period", self.health_start_period.is_some()),
        ];
        if let Some((flag, _)) = tuning.iter().find(|(_, set)| *set) {
            let Some(health) = &mut spec.task.health else {
                return refuse(format!(
                    "--{flag} needs a health check: pass --health-cmd too"
                ));
            };
            if let Some(d) = &self.health_interval {
                health.interval_ms = duration("health-interval", d)?;
            }
            if let Some(d) = &self.health_timeout {
                health.timeout_ms = duration("health-timeout", d)?;
            }
            if let Some(n) = self.health_retries {
                health.retries = n;
            }
            if let Some(d) = &self.health_start_period {
                health.start_period_ms = duration("health-start-period", d)?;
            }
        }
        if let Some(d) = &self.stop_grace_period {
            spec.task.stop_grace_ms = duration("stop-grace-period", d)?;
        }
        PaceFlags {
            prefix: "update",
            parallelism: self.update_parallelism,
            delay: self.update_delay.as_deref(),
            failure_action: self.update_failure_action.as_deref(),
            monitor: self.update_monitor.as_deref(),
            max_failure_ratio: self.update_max_failure_ratio,
            order: self.update_order.as_deref(),
        }
        .apply(&mut spec.update)?;
        PaceFlags {
            prefix: "rollback",
            parallelism: self.rollback_parallelism,
            delay: self.rollback_delay.as_deref(),
            failure_action: self.rollback_failure_action.as_deref(),
            monitor: self.rollback_monitor.as_deref(),
            max_failure_ratio: self.rollback_max_failure_ratio,
            order: self.rollback_order.as_deref(),
        }
        .apply(&mut spec.rollback)
    }
}

/// What a task may do: `--user`, `--cap-add`, `--cap-drop`, shared by
/// `create` and `update`.
#[derive(Clone, Debug, Default, Args)]
pub struct PrivilegeFlags {
    /// Username or UID (format: <name|uid>[:<group|gid>]); update: "" for
    /// root again.
    #[arg(long, short = 'u', value_name = "USER")]
    pub user: Option<String>,
    /// Add Linux capabilities (e.g. NET_ADMIN, or ALL).
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop Linux capabilities (e.g. NET_RAW, or ALL).
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
}

fn capabilities(flag: &str, values: &[String]) -> Result<Vec<String>, FlagError> {
    values
        .iter()
        .map(|v| {
            mesh_api::capability::canonical(v).map_err(|e| FlagError(format!("--{flag}: {e}")))
        })
        .collect()
}

impl PrivilegeFlags {
    /// Applies the flags that are set to `spec`, as `docker service update`
    /// does: a capability added leaves the dropped ones and the other way
    /// round, so that the last word on each wins.
    ///
    /// # Errors
    /// An unknown capability or a malformed user (naming its flag).
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), FlagError> {
        if let Some(user) = &self.user {
            if user.is_empty() {
                spec.task.user = None;
            } else {
                mesh_api::spec::validate_user(user)
                    .map_err(|e| FlagError(format!("--user: {e}")))?;
                spec.task.user = Some(user.clone());
            }
        }
        let (add, drop) = (
            capabilities("cap-add", &self.cap_add)?,
            capabilities("cap-drop", &self.cap_drop)?,
        );
        let task = &mut spec.task;
        task.cap_drop.retain(|c| !add.contains(c));
        task.cap_add.retain(|c| !drop.contains(c));
        for (new, list) in [(add, &mut task.cap_add), (drop, &mut task.cap_drop)] {
            for cap in new {
                if !list.contains(&cap) {
                    list.push(cap);
                }
            }
        }
        Ok(())
    }
}

/// CPU and memory: `--limit-cpu`, `--limit-memory`, `--reserve-cpu`,
/// `--reserve-memory`, shared by `create` and `update` (on update, `0` clears
/// one, as docker).
#[derive(Clone, Debug, Default, Args)]
pub struct ResourceFlags {
    /// Limit CPUs (e.g. 0.5).
    #[arg(long, value_name = "DECIMAL", allow_hyphen_values = true)]
    pub limit_cpu: Option<String>,
    /// Limit memory (e.g. 64M, 1g, bytes).
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub limit_memory: Option<String>,
    /// Reserve CPUs: only a node with this much unreserved gets the task.
    #[arg(long, value_name = "DECIMAL", allow_hyphen_values = true)]
    pub reserve_cpu: Option<String>,
    /// Reserve memory: only a node with this much unreserved gets the task.
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub reserve_memory: Option<String>,
}

impl ResourceFlags {
    /// Applies the flags that are set to `spec` (the checks of the whole are
    /// [`ServiceSpec::validate`]'s).
    ///
    /// # Errors
    /// A value that does not parse, naming its flag as docker does.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), FlagError> {
        use mesh_api::resources::{parse_memory_bytes, parse_nano_cpus};
        let resources = &mut spec.task.resources;
        let cpu_flags = [
            (
                "limit-cpu",
                &self.limit_cpu,
                &mut resources.limits.nano_cpus,
            ),
            (
                "reserve-cpu",
                &self.reserve_cpu,
                &mut resources.reservations.nano_cpus,
            ),
        ];
        for (flag, value, field) in cpu_flags {
            if let Some(value) = value {
                *field = parse_nano_cpus(value).map_err(|e| {
                    FlagError(format!(
                        "invalid argument {value:?} for \"--{flag}\" flag: {e}"
                    ))
                })?;
            }
        }
        let memory_flags = [
            (
                "limit-memory",
                &self.limit_memory,
                &mut resources.limits.memory_bytes,
            ),
            (
                "reserve-memory",
                &self.reserve_memory,
                &mut resources.reservations.memory_bytes,
            ),
        ];
        for (flag, value, field) in memory_flags {
            if let Some(value) = value {
                *field = parse_memory_bytes(value).map_err(|e| {
                    FlagError(format!(
                        "invalid argument {value:?} for \"--{flag}\" flag: {e}"
                    ))
                })?;
            }
        }
        Ok(())
    }
}

/// `meshctl service create`'s flags.
#[derive(Clone, Debug, Args)]
pub struct CreateFlags {
    /// Service name (default: the program's or image's name and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// Number of tasks.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Service mode.
    #[arg(long, value_enum, default_value_t = ModeFlag::Replicated)]
    pub mode: ModeFlag,
    /// Publish a port on every node: [PUBLISHED:]TARGET[/PROTOCOL] or
    /// published=P,target=T[,protocol=udp][,mode=host].
    #[arg(long, short = 'p', value_name = "PORT")]
    pub publish: Vec<String>,
    /// Placement constraint, e.g. node.labels.zone==a.
    #[arg(long, value_name = "EXPR")]
    pub constraint: Vec<String>,
    /// Placement preference, spread=node.labels.<key>: spread the tasks evenly
    /// over the label's values (outermost first).
    #[arg(long, value_name = "PREF")]
    pub placement_pref: Vec<String>,
    /// Maximum number of tasks per node (0: no limit).
    #[arg(long, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
    /// Set an environment variable (KEY=VALUE).
    #[arg(long, short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Service label (key=value).
    #[arg(long, short = 'l', value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// What runs the tasks: process (IMAGE is the program, ARGs its
    /// arguments) or docker (IMAGE is a container image).
    #[arg(long, default_value = "process")]
    pub runtime: String,
    /// Endpoint mode: vip or dnsrr.
    #[arg(long, value_name = "MODE")]
    pub endpoint_mode: Option<String>,
    /// How new connections choose a task: rr (round robin, the default), maglev
    /// (consistent hashing of the connection), lc (least connections) or sh (source
    /// hashing: one client address, one task).
    #[arg(long, value_name = "ALGORITHM")]
    pub lb_algorithm: Option<String>,
    /// Network attachment: NAME, or name=NAME[,alias=ALIAS...] (repeatable).
    #[arg(long, value_name = "NETWORK")]
    pub network: Vec<String>,
    /// Attach a filesystem mount (repeatable): type=bind,source=/node/path,target=/path
    /// [,readonly], type=volume,source=NAME,target=/path, or
    /// type=tmpfs,target=/path[,tmpfs-size=64m][,tmpfs-mode=1777].
    #[arg(long, value_name = "MOUNT")]
    pub mount: Vec<String>,
    #[command(flatten)]
    pub files: super::file::FileFlags,
    #[command(flatten)]
    pub policy: PolicyFlags,
    #[command(flatten)]
    pub privilege: PrivilegeFlags,
    #[command(flatten)]
    pub resources: ResourceFlags,
    #[command(flatten)]
    pub container: super::container::ContainerFlags,
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(long, short)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// The program to run (process runtime) or the image (docker runtime).
    pub image: String,
    /// Its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// A default service name: the program's or image's base name (without a
/// tag), cleaned up to a valid name, and `suffix`.
#[must_use]
pub fn default_name(image: &str, suffix: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split([':', '@']).next().unwrap_or(base);
    let mut name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(40)
        .collect();
    if name.is_empty() {
        name.push_str("service");
    }
    format!("{name}-{suffix}")
}

fn parse_all<T: std::str::FromStr<Err = SpecError>>(
    flag: &str,
    values: &[String],
) -> Result<Vec<T>, FlagError> {
    values
        .iter()
        .map(|v| {
            v.parse::<T>()
                .map_err(|e| FlagError(format!("--{flag}: {e}")))
        })
        .collect()
}

fn label(flag: &str, value: &str) -> Result<(String, String), FlagError> {
    parse_label(value).map_err(|e| FlagError(format!("--{flag}: {e}")))
}

impl CreateFlags {
    /// The spec these flags describe, validated. `suffix` completes the
    /// default name when `--name` is not given.
    ///
    /// # Errors
    /// The first malformed flag, or what [`ServiceSpec::validate`] refuses.
    pub fn spec(&self, suffix: &str) -> Result<ServiceSpec, FlagError> {
        let runtime = self.runtime.parse::<RuntimeKind>()?;
        let name = match &self.name {
            Some(name) => name.clone(),
            None => default_name(&self.image, suffix),
        };
        let mut spec = ServiceSpec::new(&name, runtime, &self.image, self.args.clone());
        spec.mode = match (self.mode, self.replicas) {
            (ModeFlag::Replicated, replicas) => ServiceMode::Replicated {
                replicas: replicas.unwrap_or(1),
            },
            (ModeFlag::Global, None) => ServiceMode::Global,
            (ModeFlag::Global, Some(_)) => {
                return refuse("--replicas can only be used with replicated mode");
            }
        };
        spec.endpoint.ports = parse_all("publish", &self.publish)?;
        if let Some(mode) = &self.endpoint_mode {
            spec.endpoint.mode = mode.parse::<EndpointMode>()?;
        }
        if let Some(algorithm) = &self.lb_algorithm {
            spec.endpoint.lb_algorithm = algorithm.parse::<LbAlgorithm>()?;
        }
        spec.constraints = parse_all("constraint", &self.constraint)?;
        spec.preferences = parse_all("placement-pref", &self.placement_pref)?;
        spec.max_replicas_per_node = self.replicas_max_per_node.unwrap_or(0);
        spec.task.networks = self
            .network
            .iter()
            .map(|v| super::network::parse_attachment(v))
            .collect::<Result<_, _>>()?;
        spec.task.mounts = parse_all("mount", &self.mount)?;
        spec.task.env.clone_from(&self.env);
        self.files.apply(&mut spec.task)?;
        for value in &self.label {
            let (k, v) = label("label", value)?;
            spec.labels.insert(k, v);
        }
        self.policy.apply(&mut spec)?;
        self.privilege.apply(&mut spec)?;
        self.resources.apply(&mut spec)?;
        self.container.apply(&mut spec.task)?;
        spec.validate()?;
        Ok(spec)
    }
}

/// `meshctl service update`'s flags.
#[derive(Clone, Debug, Args)]
pub struct UpdateFlags {
    /// New program (process runtime) or image (docker runtime).
    #[arg(long)]
    pub image: Option<String>,
    /// New arguments, as one string split like a shell does ("" for none).
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Add or update an environment variable (KEY=VALUE).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env_add: Vec<String>,
    /// Remove an environment variable (KEY).
    #[arg(long, value_name = "KEY")]
    pub env_rm: Vec<String>,
    /// Add or update a published port (as --publish).
    #[arg(long, value_name = "PORT")]
    pub publish_add: Vec<String>,
    /// Remove a published port, by its published port or its target port
    /// (PORT[/PROTOCOL]).
    #[arg(long, value_name = "PORT")]
    pub publish_rm: Vec<String>,
    /// Add a placement constraint.
    #[arg(long, value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint.
    #[arg(long, value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Add a placement preference (spread=node.labels.<key>), after the others.
    #[arg(long, value_name = "PREF")]
    pub placement_pref_add: Vec<String>,
    /// Remove a placement preference.
    #[arg(long, value_name = "PREF")]
    pub placement_pref_rm: Vec<String>,
    /// Maximum number of tasks per node (0: no limit).
    #[arg(long, value_name = "N")]
    pub replicas_max_per_node: Option<u64>,
    /// Add or update a service label (key=value).
    #[arg(long, value_name = "KEY=VALUE")]
    pub label_add: Vec<String>,
    /// Remove a service label (key).
    #[arg(long, value_name = "KEY")]
    pub label_rm: Vec<String>,
    /// Number of tasks.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Endpoint mode: vip or dnsrr.
    #[arg(long, value_name = "MODE")]
    pub endpoint_mode: Option<String>,
    /// How new connections choose a task: rr, maglev, lc or sh.
    #[arg(long, value_name = "ALGORITHM")]
    pub lb_algorithm: Option<String>,
    /// Add a network: NAME, or name=NAME[,alias=ALIAS...].
    #[arg(long, value_name = "NETWORK")]
    pub network_add: Vec<String>,
    /// Remove a network (name or ID).
    #[arg(long, value_name = "NETWORK")]
    pub network_rm: Vec<String>,
    #[command(flatten)]
    pub files: super::file::FileUpdateFlags,
    /// Add or replace a mount (as --mount; one with the same target is replaced).
    #[arg(long, value_name = "MOUNT")]
    pub mount_add: Vec<String>,
    /// Remove a mount by its target path.
    #[arg(long, value_name = "PATH")]
    pub mount_rm: Vec<String>,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    pub force: bool,
    /// Roll back to the previous spec.
    #[arg(long)]
    pub rollback: bool,
    #[command(flatten)]
    pub policy: PolicyFlags,
    #[command(flatten)]
    pub privilege: PrivilegeFlags,
    #[command(flatten)]
    pub resources: ResourceFlags,
    #[command(flatten)]
    pub container: super::container::ContainerUpdateFlags,
    /// Exit immediately instead of waiting for the service to converge.
    #[arg(long, short)]
    pub detach: bool,
    /// Suppress progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// The service (name, ID or ID prefix).
    pub service: String,
}

/// Splits `--args` the way a shell splits words: spaces separate, single
/// and double quotes group, a backslash escapes the next character.
///
/// # Errors
/// An unterminated quote or a trailing backslash.
pub fn split_args(line: &str) -> Result<Vec<String>, FlagError> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return refuse(format!("--args {line:?}: unterminated quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => word.push(c),
                            None => {
                                return refuse(format!("--args {line:?}: unterminated quote"));
                            }
                        },
                        Some(c) => word.push(c),
                        None => return refuse(format!("--args {line:?}: unterminated quote")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return refuse(format!("--args {line:?}: trailing backslash")),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn env_key(var: &str) -> &str {
    var.split_once('=').map_or(var, |(k, _)| k)
}

/// Whether `--publish-rm value` names `port`: by its published port (or
/// its target port when the value has no published part), same protocol.
fn port_matches(port: &PortSpec, value: &PortSpec) -> bool {
    if port.protocol != value.protocol {
        return false;
    }
    match value.published {
        Some(published) => port.published == Some(published) && port.target == value.target,
        None => port.published == Some(value.target) || port.target == value.target,
    }
}

/// Adds published ports to `spec`, replacing a port published on the same
/// port and protocol (`service publish`, `--publish-add`).
///
/// # Errors
/// A malformed port.
pub fn publish_add(spec: &mut ServiceSpec, values: &[String]) -> Result<(), FlagError> {
    for port in parse_all::<PortSpec>("publish-add", values)? {
        spec.endpoint.ports.retain(|p| {
            !(port.published.is_some()
                && p.published == port.published
                && p.protocol == port.protocol)
        });
        if !spec.endpoint.ports.contains(&port) {
            spec.endpoint.ports.push(port);
        }
    }
    Ok(())
}

/// Removes published ports from `spec` (`--publish-rm`, `service publish --rm`).
///
/// # Errors
/// A malformed value, or one that names no published port.
pub fn publish_rm(spec: &mut ServiceSpec, values: &[String]) -> Result<(), FlagError> {
    for value in values {
        let wanted = value
            .parse::<PortSpec>()
            .map_err(|e| FlagError(format!("--publish-rm: {e}")))?;
        let before = spec.endpoint.ports.len();
        spec.endpoint.ports.retain(|p| !port_matches(p, &wanted));
        if spec.endpoint.ports.len() == before {
            return refuse(format!(
                "--publish-rm: service {} publishes no port {value}",
                spec.name
            ));
        }
    }
    Ok(())
}

/// `--mount-rm`: removes the mounts at these targets (docker removes by target).
///
/// # Errors
/// A target the service has no mount at (nothing is changed).
pub fn mount_rm(spec: &mut ServiceSpec, targets: &[String]) -> Result<(), FlagError> {
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    for target in targets {
        let before = spec.task.mounts.len();
        spec.task.mounts.retain(|m| !same(&m.target, target));
        if spec.task.mounts.len() == before {
            return refuse(format!(
                "--mount-rm: service {} has no mount at {target}",
                spec.name
            ));
        }
    }
    Ok(())
}

/// `--mount-add`: adds these mounts, each replacing the service's mount at the same
/// target, as docker's `--mount-add` does.
///
/// # Errors
/// A malformed mount, or two of them at the same target (docker's message).
pub fn mount_add(spec: &mut ServiceSpec, values: &[String]) -> Result<(), FlagError> {
    let added: Vec<Mount> = parse_all("mount-add", values)?;
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    for (i, mount) in added.iter().enumerate() {
        if added[..i].iter().any(|m| same(&m.target, &mount.target)) {
            return refuse(format!(
                "--mount-add: duplicate mount target {}",
                mount.target
            ));
        }
        match spec
            .task
            .mounts
            .iter_mut()
            .find(|m| same(&m.target, &mount.target))
        {
            Some(existing) => *existing = mount.clone(),
            None => spec.task.mounts.push(mount.clone()),
        }
    }
    Ok(())
}

impl UpdateFlags {
    /// The networks `--network-add` and `--network-rm` name, for the caller to resolve
    /// to their IDs (the spec holds IDs) before [`UpdateFlags::apply_with`].
    ///
    /// # Errors
    /// A malformed `--network-add`.
    pub fn network_names(&self) -> Result<Vec<String>, FlagError> {
        let mut names: Vec<String> = self.network_rm.clone();
        for value in &self.network_add {
            names.push(super::network::parse_attachment(value)?.target);
        }
        Ok(names)
    }

    /// Changes `spec` as the flags ask, and validates the result; network names are
    /// taken as given (see [`UpdateFlags::apply_with`]).
    ///
    /// # Errors
    /// The first malformed flag, or what [`ServiceSpec::validate`] refuses.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), FlagError> {
        self.apply_with(spec, &|name| Ok(name.to_string()))
    }

    /// [`UpdateFlags::apply`], with `network_id` giving the ID of each network
    /// `--network-add` and `--network-rm` name, as docker's CLI resolves them: a network
    /// already joined is refused, and so is removing one the service is not on.
    ///
    /// # Errors
    /// As [`UpdateFlags::apply`], and what `network_id` refuses.
    pub fn apply_with(
        &self,
        spec: &mut ServiceSpec,
        network_id: &dyn Fn(&str) -> Result<String, FlagError>,
    ) -> Result<(), FlagError> {
        for name in &self.network_rm {
            let id = network_id(name)?;
            let before = spec.task.networks.len();
            spec.task.networks.retain(|a| a.target != id);
            if spec.task.networks.len() == before {
                return refuse(format!(
                    "--network-rm: service {} is not attached to network {name}",
                    spec.name
                ));
            }
        }
        for value in &self.network_add {
            let mut attachment = super::network::parse_attachment(value)?;
            let id = network_id(&attachment.target)?;
            if spec.task.networks.iter().any(|a| a.target == id) {
                return refuse(format!(
                    "service is already attached to network {}",
                    attachment.target
                ));
            }
            attachment.target = id;
            spec.task.networks.push(attachment);
        }
        self.files.apply(&mut spec.task)?;
        if let Some(image) = &self.image {
            spec.task.image.clone_from(image);
        }
        if let Some(args) = &self.args {
            spec.task.args = split_args(args)?;
        }
        for key in &self.env_rm {
            spec.task.env.retain(|v| env_key(v) != key && v != key);
        }
        for var in &self.env_add {
            let key = env_key(var);
            spec.task.env.retain(|v| env_key(v) != key);
            spec.task.env.push(var.clone());
        }
        publish_rm(spec, &self.publish_rm)?;
        publish_add(spec, &self.publish_add)?;
        mount_rm(spec, &self.mount_rm)?;
        mount_add(spec, &self.mount_add)?;
        for c in parse_all::<Constraint>("constraint-rm", &self.constraint_rm)? {
            spec.constraints.retain(|existing| *existing != c);
        }
        for c in parse_all::<Constraint>("constraint-add", &self.constraint_add)? {
            if !spec.constraints.contains(&c) {
                spec.constraints.push(c);
            }
        }
        // As docker: the removals first, then the additions appended (the
        // order of preferences is their nesting).
        let pref_rm: Vec<PlacementPreference> =
            parse_all("placement-pref-rm", &self.placement_pref_rm)?;
        spec.preferences
            .retain(|existing| !pref_rm.contains(existing));
        spec.preferences.extend(parse_all::<PlacementPreference>(
            "placement-pref-add",
            &self.placement_pref_add,
        )?);
        if let Some(max) = self.replicas_max_per_node {
            spec.max_replicas_per_node = max;
        }
        for key in &self.label_rm {
            spec.labels.remove(key);
        }
        for value in &self.label_add {
            let (k, v) = label("label-add", value)?;
            spec.labels.insert(k, v);
        }
        if let Some(replicas) = self.replicas {
            match &mut spec.mode {
                ServiceMode::Replicated { replicas: r } => *r = replicas,
                ServiceMode::Global => {
                    return refuse("--replicas can only be used with replicated mode");
                }
            }
        }
        if let Some(mode) = &self.endpoint_mode {
            spec.endpoint.mode = mode.parse::<EndpointMode>()?;
        }
        if let Some(algorithm) = &self.lb_algorithm {
            spec.endpoint.lb_algorithm = algorithm.parse::<LbAlgorithm>()?;
        }
        if self.force {
            spec.task.force_update += 1;
        }
        self.policy.apply(spec)?;
        self.privilege.apply(spec)?;
        self.resources.apply(spec)?;
        self.container.apply(&mut spec.task)?;
        spec.validate()?;
        Ok(())
    }
}

/// Parses `service scale`'s `SERVICE=REPLICAS`.
///
/// # Errors
/// A malformed value.
pub fn parse_scale(value: &str) -> Result<(String, u32), FlagError> {
    let bad = || {
        FlagError(format!(
            "invalid scale specifier {value:?}: expected SERVICE=REPLICAS"
        ))
    };
    let (name, replicas) = value.split_once('=').ok_or_else(bad)?;
    if name.trim().is_empty() {
        return Err(bad());
    }
    let replicas = replicas.trim().parse::<u32>().map_err(|_| {
        FlagError(format!(
            "invalid replicas value {replicas:?} in {value:?}: expected a non-negative number"
        ))
    })?;
    Ok((name.trim().to_string(), replicas))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use mesh_api::spec::{ConstraintKey, Protocol, PublishMode};

    #[derive(Parser)]
    struct Create {
        #[command(flatten)]
        flags: CreateFlags,
    }

    #[derive(Parser)]
    struct Update {
        #[command(flatten)]
        flags: UpdateFlags,
    }

    fn create(args: &[&str]) -> Result<ServiceSpec, FlagError> {
        let cli = Create::try_parse_from(std::iter::once("create").chain(args.iter().copied()))
            .map_err(|e| FlagError(e.to_string()))?;
        cli.flags.spec("abcd")
    }

    fn update(spec: &ServiceSpec, args: &[&str]) -> Result<ServiceSpec, FlagError> {
        let cli = Update::try_parse_from(
            std::iter::once("update")
                .chain(args.iter().copied())
                .chain(["web"]),
        )
        .map_err(|e| FlagError(e.to_string()))?;
        let mut spec = spec.clone();
        cli.flags.apply(&mut spec)?;
        Ok(spec)
    }

    #[test]
    fn create_flags_build_the_spec() {
        let spec = create(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-p",
            "8080:80",
            "--publish",
            "published=5353,target=53,protocol=udp,mode=host",
            "--constraint",
            "node.labels.zone==a",
            "-e",
            "GREETING=hi",
            "-l",
            "tier=front",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "500ms",
            "--restart-max-attempts",
            "4",
            "--health-cmd",
            "true",
            "--health-interval",
            "2s",
            "--health-retries",
            "5",
            "--stop-grace-period",
            "3s",
            "--update-parallelism",
            "2",
            "--update-delay",
            "1s",
            "--update-failure-action",
            "rollback",
            "--update-max-failure-ratio",
            "0.25",
            "--update-order",
            "start-first",
            "--rollback-monitor",
            "2s",
            "/bin/sleep",
            "1000",
        ])
        .unwrap();
        assert_eq!(spec.name, "web");
        assert_eq!(spec.replicas(), Some(3));
        assert_eq!(spec.task.runtime, RuntimeKind::Process);
        assert_eq!(spec.task.image, "/bin/sleep");
        assert_eq!(spec.task.args, vec!["1000"]);
        assert_eq!(spec.task.env, vec!["GREETING=hi"]);
        assert_eq!(spec.labels["tier"], "front");
        assert_eq!(spec.endpoint.ports.len(), 2);
        assert_eq!(spec.endpoint.ports[0].published, Some(8080));
        assert_eq!(spec.endpoint.ports[1].protocol, Protocol::Udp);
        assert_eq!(spec.endpoint.ports[1].mode, PublishMode::Host);
        assert_eq!(spec.constraints[0].key, ConstraintKey::Label("zone".into()));
        assert_eq!(spec.task.restart.condition, RestartCondition::OnFailure);
        assert_eq!(spec.task.restart.delay_ms, 500);
        assert_eq!(spec.task.restart.max_attempts, 4);
        let health = spec.task.health.as_ref().unwrap();
        assert_eq!(
            (health.cmd.as_str(), health.interval_ms, health.retries),
            ("true", 2_000, 5)
        );
        assert_eq!(health.timeout_ms, 30_000, "docker's default timeout");
        assert_eq!(spec.task.stop_grace_ms, 3_000);
        assert_eq!(spec.update.parallelism, 2);
        assert_eq!(spec.update.delay_ms, 1_000);
        assert_eq!(spec.update.failure_action, FailureAction::Rollback);
        assert_eq!(spec.update.max_failure_permille, 250);
        assert_eq!(spec.update.order, UpdateOrder::StartFirst);
        assert_eq!(spec.rollback.monitor_ms, 2_000);
        assert_eq!(spec.rollback.parallelism, 1, "untouched: docker's default");
    }

    #[test]
    fn program_arguments_may_look_like_flags() {
        let spec = create(&["--name", "x", "/bin/sh", "-c", "echo hi"]).unwrap();
        assert_eq!(spec.task.args, vec!["-c", "echo hi"]);
        let spec = create(&["--name", "x", "--runtime", "docker", "nginx:1.27"]).unwrap();
        assert_eq!(spec.task.runtime, RuntimeKind::Docker);
        assert_eq!(spec.replicas(), Some(1));
    }

    #[test]
    fn a_missing_name_is_made_from_the_program() {
        assert_eq!(
            create(&["/usr/bin/task-echo"]).unwrap().name,
            "task-echo-abcd"
        );
        assert_eq!(default_name("library/nginx:1.27", "x1"), "nginx-x1");
        assert_eq!(default_name("./.odd name", "x1"), "odd-name-x1");
    }

    #[test]
    fn global_mode_has_no_replicas() {
        let spec = create(&["--name", "g", "--mode", "global", "/bin/true"]).unwrap();
        assert_eq!(spec.mode, ServiceMode::Global);
        let err = create(&["--mode", "global", "--replicas", "2", "/bin/true"]).unwrap_err();
        assert!(err.to_string().contains("replicated mode"), "{err}");
    }

    #[test]
    fn placement_preferences_and_max_replicas_per_node_like_docker() {
        let spec = create(&[
            "--name",
            "web",
            "--placement-pref",
            "spread=node.labels.region",
            "--placement-pref",
            "spread=node.labels.zone",
            "--replicas-max-per-node",
            "2",
            "/bin/true",
        ])
        .unwrap();
        let shown: Vec<String> = spec.preferences.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["spread=node.labels.region", "spread=node.labels.zone"]
        );
        assert_eq!(spec.max_replicas_per_node, 2);
        // Update: removals, then additions appended; 0 lifts the limit.
        let after = update(
            &spec,
            &[
                "--placement-pref-rm",
                "spread=node.labels.region",
                "--placement-pref-add",
                "spread=node.labels.rack",
                "--replicas-max-per-node",
                "0",
            ],
        )
        .unwrap();
        let shown: Vec<String> = after.preferences.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            ["spread=node.labels.zone", "spread=node.labels.rack"]
        );
        assert_eq!(after.max_replicas_per_node, 0);
        // Untouched by an update that does not name them.
        assert_eq!(
            update(&spec, &["--replicas", "4"]).unwrap().preferences,
            spec.preferences
        );
        // Docker's words for bad values; a global service has no limit per node.
        let err = create(&["--placement-pref", "pack=node.labels.zone", "/bin/true"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--placement-pref: unsupported placement preference pack (only spread is supported)"
        );
        let err = update(&spec, &["--placement-pref-add", "spread=node.id"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--placement-pref-add: invalid placement preference"),
            "{err}"
        );
        let err = create(&[
            "--mode",
            "global",
            "--replicas-max-per-node",
            "1",
            "/bin/true",
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "replicas-max-per-node can only be used with replicated mode"
        );
    }

    #[test]
    fn bad_create_flags_are_refused_with_the_flag_named() {
        for (args, reason) in [
            (
                vec!["-p", "8080:80/sctp", "/bin/true"],
                "--publish: invalid protocol",
            ),
            (
                vec!["--restart-delay", "5", "/bin/true"],
                "--restart-delay: invalid duration",
            ),
            (
                vec!["--update-delay", "soon", "/bin/true"],
                "--update-delay",
            ),
            (
                vec!["--update-max-failure-ratio", "2", "/bin/true"],
                "between 0 and 1",
            ),
            (
                vec!["--update-order", "random", "/bin/true"],
                "--update-order",
            ),
            (
                vec!["--rollback-failure-action", "rollback", "/bin/true"],
                "pause or continue",
            ),
            (
                vec!["--restart-condition", "always", "/bin/true"],
                "restart condition",
            ),
            (vec!["--health-interval", "1s", "/bin/true"], "--health-cmd"),
            (vec!["--constraint", "zone=a", "/bin/true"], "--constraint"),
            (vec!["--runtime", "vm", "/bin/true"], "invalid runtime"),
            (
                vec!["--lb-algorithm", "lblc", "/bin/true"],
                "expected rr, maglev, lc or sh",
            ),
            (vec!["--name", "bad name", "/bin/true"], "invalid name"),
            (vec!["-e", "NOEQUALS", "/bin/true"], "KEY=VALUE"),
            (vec!["-l", "bad key=1", "/bin/true"], "--label"),
            (
                vec!["--endpoint-mode", "dnsrr", "-p", "80:80", "/bin/true"],
                "dnsrr",
            ),
            (
                vec!["--no-healthcheck", "--health-cmd", "true", "/bin/true"],
                "cannot be used",
            ),
        ] {
            let err = create(&args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
    }

    fn web() -> ServiceSpec {
        create(&[
            "--name",
            "web",
            "--replicas",
            "2",
            "-p",
            "8080:80",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "--constraint",
            "node.role==worker",
            "/bin/sleep",
            "1000",
        ])
        .unwrap()
    }

    #[test]
    fn update_flags_change_only_what_they_name() {
        let before = web();
        let after = update(
            &before,
            &[
                "--image",
                "/bin/true",
                "--args",
                "-c 'echo hi there' \"a b\"",
                "--env-add",
                "A=9",
                "--env-rm",
                "B",
                "--publish-add",
                "9090:90",
                "--publish-rm",
                "8080",
                "--constraint-rm",
                "node.role==worker",
                "--constraint-add",
                "node.labels.zone==b",
                "--replicas",
                "5",
                "--update-parallelism",
                "0",
            ],
        )
        .unwrap();
        assert_eq!(after.task.image, "/bin/true");
        assert_eq!(after.task.args, vec!["-c", "echo hi there", "a b"]);
        assert_eq!(after.task.env, vec!["A=9"]);
        assert_eq!(after.endpoint.ports.len(), 1);
        assert_eq!(after.endpoint.ports[0].published, Some(9090));
        assert_eq!(after.constraints.len(), 1);
        assert_eq!(after.constraints[0].value, "b");
        assert_eq!(after.replicas(), Some(5));
        assert_eq!(after.update.parallelism, 0);
        assert_eq!(after.task.restart, before.task.restart);
        assert_eq!(after.task.force_update, before.task.force_update);
    }

    #[test]
    fn force_bumps_the_task_spec_and_nothing_else_changes_nothing() {
        let before = web();
        let forced = update(&before, &["--force"]).unwrap();
        assert_eq!(forced.task.force_update, before.task.force_update + 1);
        assert_ne!(forced.task, before.task);
        assert_eq!(update(&before, &[]).unwrap(), before);
    }

    #[test]
    fn publish_rm_by_published_or_target_port() {
        let mut spec = web();
        publish_rm(&mut spec.clone(), &["80".into()]).unwrap();
        publish_rm(&mut spec.clone(), &["8080:80".into()]).unwrap();
        let err = publish_rm(&mut spec, &["8081".into()]).unwrap_err();
        assert!(err.to_string().contains("publishes no port 8081"), "{err}");
        let err = publish_rm(&mut spec, &["8080/udp".into()]).unwrap_err();
        assert!(err.to_string().contains("no port"), "{err}");
        publish_add(&mut spec, &["8080:81".into(), "9000:90".into()]).unwrap();
        let ports: Vec<_> = spec.endpoint.ports.iter().map(|p| p.to_string()).collect();
        assert_eq!(ports, vec!["*:8080->81/tcp", "*:9000->90/tcp"]);
    }

    #[test]
    fn resources_as_docker_takes_them_and_zero_clears_on_update() {
        let spec = create(&[
            "--limit-cpu",
            "0.5",
            "--limit-memory",
            "64M",
            "--reserve-cpu",
            ".25",
            "--reserve-memory",
            "32m",
            "/bin/true",
        ])
        .unwrap();
        let r = spec.task.resources;
        assert_eq!(r.limits.nano_cpus, 500_000_000);
        assert_eq!(r.limits.memory_bytes, 64 << 20);
        assert_eq!(r.reservations.nano_cpus, 250_000_000);
        assert_eq!(r.reservations.memory_bytes, 32 << 20);
        // A changed limit is a new task spec (the service rolls); 0 clears.
        let after = update(&spec, &["--limit-memory", "1g", "--reserve-memory", "0"]).unwrap();
        assert_ne!(after.task, spec.task);
        assert_eq!(after.task.resources.limits.memory_bytes, 1 << 30);
        assert_eq!(after.task.resources.reservations.memory_bytes, 0);
        assert_eq!(after.task.resources.limits.nano_cpus, 500_000_000);
        for (args, reason) in [
            (
                vec!["--limit-memory", "64x"],
                "invalid argument \"64x\" for \"--limit-memory\" flag: invalid size: '64x'",
            ),
            (
                vec!["--limit-cpu", "-1"],
                "invalid argument \"-1\" for \"--limit-cpu\" flag: invalid cpu value -1: \
                 must not be negative",
            ),
            (
                vec!["--reserve-cpu", "1/2"],
                "failed to parse \"1/2\" as a rational number",
            ),
            (
                vec!["--limit-memory", "1k"],
                "invalid memory value 1024: Must be at least 4MiB",
            ),
            (
                vec!["--reserve-memory", "128M"],
                "memory reservation (128MiB) must be less than or equal to memory limit (64MiB)",
            ),
            (vec!["--limit-memory", "99999999999p"], "too large"),
        ] {
            let err = update(&spec, &args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
    }

    #[test]
    fn container_settings_as_docker_takes_them() {
        let spec = create(&[
            "--runtime",
            "docker",
            "--hostname",
            "web-{{.Task.Slot}}",
            "--add-host",
            "db:10.0.0.5",
            "--add-host",
            "cache=10.0.0.6",
            "--dns",
            "1.1.1.1",
            "--dns-search",
            "example.com",
            "--dns-option",
            "ndots:2",
            "-w",
            "/srv",
            "--container-label",
            "team=web",
            "--entrypoint",
            "/bin/sh -c",
            "nginx",
        ])
        .unwrap();
        let task = &spec.task;
        assert_eq!(task.hostname.as_deref(), Some("web-{{.Task.Slot}}"));
        assert_eq!(task.hosts, ["db:10.0.0.5", "cache:10.0.0.6"]);
        assert_eq!(
            task.dns.nameservers,
            ["1.1.1.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(task.dns.search, ["example.com"]);
        assert_eq!(task.dns.options, ["ndots:2"]);
        assert_eq!(task.workdir.as_deref(), Some("/srv"));
        assert_eq!(task.container_labels["team"], "web");
        assert_eq!(task.entrypoint, ["/bin/sh", "-c"]);
        let after = update(
            &spec,
            &[
                "--host-rm",
                "db",
                "--host-add",
                "api:10.0.0.7",
                "--dns-rm",
                "1.1.1.1",
                "--dns-add",
                "9.9.9.9",
                "--dns-search-rm",
                "example.com",
                "--dns-option-add",
                "rotate",
                "--workdir",
                "",
                "--container-label-rm",
                "team",
                "--container-label-add",
                "tier=front",
                "--hostname",
                "",
                "--entrypoint",
                "",
            ],
        )
        .unwrap();
        let task = &after.task;
        assert_eq!(task.hosts, ["cache:10.0.0.6", "api:10.0.0.7"]);
        assert_eq!(
            task.dns.nameservers,
            ["9.9.9.9".parse::<std::net::IpAddr>().unwrap()]
        );
        assert!(task.dns.search.is_empty());
        assert_eq!(task.dns.options, ["ndots:2", "rotate"]);
        assert_eq!(
            (task.workdir.as_ref(), task.hostname.as_ref()),
            (None, None)
        );
        assert_eq!(task.container_labels.len(), 1);
        assert!(task.entrypoint.is_empty());
        // A mapping removed by host and address.
        let fewer = update(&after, &["--host-rm", "api:10.0.0.7"]).unwrap();
        assert_eq!(fewer.task.hosts, ["cache:10.0.0.6"]);
        for (args, wanted) in [
            (
                vec!["--add-host", "x"],
                "invalid argument \"x\" for \"--add-host\" flag: bad format for add-host: \"x\"",
            ),
            (
                vec!["--dns", "nope"],
                "invalid argument \"nope\" for \"--dns\" flag: nope is not an ip address",
            ),
            (vec!["--dns-search", "x_y"], "x_y is not a valid domain"),
            (vec!["-w", "srv"], "it needs to be an absolute path"),
            (vec!["--hostname", "a b"], "invalid hostname"),
            (
                vec!["--hostname", "w{{.Task.Index}}"],
                "unknown template placeholder {{.Task.Index}}",
            ),
            (
                vec!["-e", "A={{.Node.Name}}"],
                "environment variable A: unknown template placeholder",
            ),
            (
                vec!["--entrypoint", "sh"],
                "entrypoint is for the docker runtime",
            ),
        ] {
            let mut full = args.clone();
            full.push("sleep");
            let err = create(&full).unwrap_err().to_string();
            assert!(err.contains(wanted), "{args:?}: {err}");
        }
        let err = update(&spec, &["--host-add", "y"]).unwrap_err().to_string();
        assert!(err.contains("for \"--host-add\" flag"), "{err}");
    }

    #[test]
    fn user_and_capabilities_as_docker_takes_them() {
        let spec = create(&[
            "--user",
            "nobody:nogroup",
            "--cap-add",
            "net_admin",
            "--cap-drop",
            "CAP_NET_RAW",
            "--cap-drop",
            "all",
            "/bin/true",
        ])
        .unwrap();
        assert_eq!(spec.task.user.as_deref(), Some("nobody:nogroup"));
        assert_eq!(spec.task.cap_add, ["CAP_NET_ADMIN"]);
        assert_eq!(spec.task.cap_drop, ["CAP_NET_RAW", "ALL"]);
        // Update: the last word on a capability wins; "" is root again.
        let after = update(
            &spec,
            &["--cap-add", "NET_RAW", "--cap-drop", "NET_ADMIN", "-u", ""],
        )
        .unwrap();
        assert_eq!(after.task.user, None);
        assert_eq!(after.task.cap_add, ["CAP_NET_RAW"]);
        assert_eq!(after.task.cap_drop, ["ALL", "CAP_NET_ADMIN"]);
        for (args, reason) in [
            (
                vec!["--cap-add", "FLY"],
                "--cap-add: unknown capability: \"FLY\"",
            ),
            (vec!["--cap-drop", ""], "--cap-drop: unknown capability"),
            (vec!["--user", "a b"], "--user: invalid user"),
            (vec!["--user", "a:"], "expected NAME|UID[:GROUP|GID]"),
            (vec!["--user", ":0"], "invalid user"),
        ] {
            let err = update(&spec, &args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
    }

    #[test]
    fn bad_update_flags_are_refused() {
        let before = web();
        for (args, reason) in [
            (vec!["--publish-add", "x"], "--publish-add"),
            (vec!["--args", "'open"], "unterminated quote"),
            (vec!["--image", " "], "command to run"),
            (vec!["--health-timeout", "1s"], "--health-cmd"),
            (vec!["--stop-grace-period", "1"], "--stop-grace-period"),
        ] {
            let err = update(&before, &args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
        let global = create(&["--name", "g", "--mode", "global", "/bin/true"]).unwrap();
        let err = update(&global, &["--replicas", "3"]).unwrap_err();
        assert!(err.to_string().contains("replicated mode"));
    }

    #[test]
    fn health_can_be_tuned_then_removed() {
        let with = update(
            &web(),
            &["--health-cmd", "test -f /tmp/ok", "--health-timeout", "1s"],
        )
        .unwrap();
        assert_eq!(with.task.health.as_ref().unwrap().timeout_ms, 1_000);
        let tuned = update(&with, &["--health-retries", "1"]).unwrap();
        assert_eq!(tuned.task.health.as_ref().unwrap().cmd, "test -f /tmp/ok");
        assert_eq!(tuned.task.health.as_ref().unwrap().retries, 1);
        let without = update(&tuned, &["--no-healthcheck"]).unwrap();
        assert_eq!(without.task.health, None);
    }

    #[test]
    fn mounts_are_created_added_replaced_and_removed_by_target() {
        let spec = create(&[
            "--mount",
            "type=bind,source=/srv/site,target=/site,readonly",
            "--mount",
            "type=volume,src=cache,dst=/cache",
            "task-echo",
        ])
        .unwrap();
        assert_eq!(spec.task.mounts.len(), 2);
        assert!(spec.task.mounts[0].readonly);
        let changed = update(
            &spec,
            &[
                "--mount-add",
                "type=tmpfs,target=/scratch,tmpfs-size=1m",
                "--mount-add",
                "type=bind,source=/srv/other,target=/site",
                "--mount-rm",
                "/cache",
            ],
        )
        .unwrap();
        let texts: Vec<String> = changed
            .task
            .mounts
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            texts,
            [
                "type=bind,source=/srv/other,target=/site",
                "type=tmpfs,target=/scratch,tmpfs-size=1048576"
            ]
        );
        assert_ne!(changed.task, spec.task, "a rolling update");
        for (args, reason) in [
            (
                &["--mount-rm", "/nope"][..],
                "service web has no mount at /nope",
            ),
            (
                &[
                    "--mount-add",
                    "type=tmpfs,target=/a",
                    "--mount-add",
                    "type=tmpfs,dst=/a",
                ],
                "--mount-add: duplicate mount target /a",
            ),
            (
                &["--mount-add", "type=bind,target=/a"],
                "--mount-add: invalid mount config",
            ),
        ] {
            let err = update(&web(), args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
        for (args, reason) in [
            (
                vec!["--mount", "type=bind,source=/a,target=/", "x"],
                "--mount: invalid specification: destination can't be '/'",
            ),
            (
                vec![
                    "--mount",
                    "type=tmpfs,dst=/a",
                    "--mount",
                    "type=tmpfs,dst=/a",
                    "x",
                ],
                "duplicate mount point: /a",
            ),
        ] {
            let err = create(&args).unwrap_err().to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
    }

    #[test]
    fn args_split_like_a_shell() {
        assert_eq!(split_args("").unwrap(), Vec::<String>::new());
        assert_eq!(split_args("  a  b ").unwrap(), vec!["a", "b"]);
        assert_eq!(
            split_args(r#"a\ b "c \"d\"" ''"#).unwrap(),
            vec!["a b", "c \"d\"", ""]
        );
        assert!(split_args("trailing\\").is_err());
    }

    #[test]
    fn networks_are_added_and_removed_by_id() {
        let spec = create(&[
            "--name",
            "api",
            "--network",
            "back",
            "--network",
            "name=front,alias=web",
            "task-echo",
        ])
        .unwrap();
        let targets: Vec<_> = spec
            .task
            .networks
            .iter()
            .map(|a| a.target.as_str())
            .collect();
        assert_eq!(targets, ["back", "front"]);
        assert_eq!(spec.task.networks[1].aliases, ["web"]);
        let err = create(&["--network", "name=back,alias=not_valid-", "task-echo"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("alias"), "{err}");
        // The stored spec holds IDs; names are resolved to them first.
        let mut stored = spec.clone();
        stored.task.networks[0].target = "00000000000000b0".into();
        stored.task.networks[1].target = "00000000000000f0".into();
        let ids = |name: &str| match name {
            "back" => Ok("00000000000000b0".to_string()),
            "front" => Ok("00000000000000f0".to_string()),
            "mid" => Ok("00000000000000a0".to_string()),
            other => Err(FlagError::new(format!("network {other} not found"))),
        };
        let cli = |args: &[&str]| {
            Update::try_parse_from(
                std::iter::once("update")
                    .chain(args.iter().copied())
                    .chain(["api"]),
            )
            .unwrap()
            .flags
        };
        let flags = cli(&["--network-rm", "back", "--network-add", "name=mid,alias=m"]);
        assert_eq!(flags.network_names().unwrap(), ["back", "mid"]);
        let mut changed = stored.clone();
        flags.apply_with(&mut changed, &ids).unwrap();
        let targets: Vec<_> = changed
            .task
            .networks
            .iter()
            .map(|a| a.target.as_str())
            .collect();
        assert_eq!(targets, ["00000000000000f0", "00000000000000a0"]);
        assert_ne!(changed.task, stored.task, "a rolling update");
        for (args, reason) in [
            (
                &["--network-add", "front"][..],
                "already attached to network front",
            ),
            (&["--network-rm", "mid"], "is not attached to network mid"),
            (&["--network-add", "nope"], "network nope not found"),
        ] {
            let mut spec = stored.clone();
            let err = cli(args)
                .apply_with(&mut spec, &ids)
                .unwrap_err()
                .to_string();
            assert!(err.contains(reason), "{args:?}: {err}");
        }
    }

    #[test]
    fn scale_values() {
        assert_eq!(parse_scale("web=5").unwrap(), ("web".into(), 5));
        assert_eq!(parse_scale("web=0").unwrap(), ("web".into(), 0));
        for bad in ["web", "=3", "web=-1", "web=x"] {
            assert!(parse_scale(bad).is_err(), "{bad}");
        }
    }
}
