//! Linux capabilities of a task, as docker grants them: a default set
//! ([`DEFAULT`], docker's), changed by a service's `--cap-add` and `--cap-drop`
//! ([`TaskSpec::cap_add`](crate::spec::TaskSpec::cap_add)), resolved by
//! [`resolve`] with docker's rules. Names are docker's: `NET_ADMIN` or
//! `CAP_NET_ADMIN`, in any case, or `ALL`; a spec stores them in the
//! canonical form [`canonical`] returns.

use std::collections::BTreeSet;

use crate::spec::{SpecError, invalid};

/// Every capability the kernel defines (as of Linux 6.x), by number.
pub const NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// What a task gets when its spec adds and drops nothing: docker's default set
/// (moby's `oci/caps/defaults.go`).
pub const DEFAULT: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// The word that stands for every capability.
pub const ALL: &str = "ALL";

/// A capability's canonical name (`CAP_` and upper case), or [`ALL`].
///
/// # Errors
/// If `name` is no capability the kernel defines.
pub fn canonical(name: &str) -> Result<String, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    if upper == ALL {
        return Ok(upper);
    }
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    if NAMES.contains(&full.as_str()) {
        Ok(full)
    } else {
        Err(invalid(format!("unknown capability: {name:?}")))
    }
}

/// A capability's number (its bit in `/proc/PID/status`'s masks).
#[must_use]
pub fn number(name: &str) -> Option<u8> {
    NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u8::try_from(i).ok())
}

/// The capabilities a task gets, by number, with docker's rules: `ALL` in
/// `add` grants every capability but those dropped; `ALL` in `drop` grants
/// only those added; otherwise the default set without those dropped, plus
/// those added (an added capability wins over the same one dropped).
///
/// # Errors
/// If a name is unknown.
pub fn resolve(add: &[String], drop: &[String]) -> Result<BTreeSet<u8>, SpecError> {
    let parse = |names: &[String]| -> Result<BTreeSet<String>, SpecError> {
        names.iter().map(|n| canonical(n)).collect()
    };
    let (add, drop) = (parse(add)?, parse(drop)?);
    let numbers = |names: &mut dyn Iterator<Item = &str>| -> BTreeSet<u8> {
        names.filter_map(number).collect()
    };
    let granted = if add.contains(ALL) {
        numbers(&mut NAMES.iter().copied().filter(|n| !drop.contains(*n)))
    } else if drop.contains(ALL) {
        numbers(&mut add.iter().map(String::as_str))
    } else {
        numbers(
            &mut DEFAULT
                .iter()
                .copied()
                .filter(|n| !drop.contains(*n))
                .chain(add.iter().map(String::as_str)),
        )
    };
    Ok(granted)
}

/// The bit mask of `caps` (as `/proc/PID/status` shows it, in hex).
#[must_use]
pub fn mask(caps: &BTreeSet<u8>) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn default_set() -> BTreeSet<u8> {
        DEFAULT.iter().filter_map(|n| number(n)).collect()
    }

    #[test]
    fn names_are_docker_s_in_any_form() {
        assert_eq!(canonical("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(canonical("CAP_SYS_TIME").unwrap(), "CAP_SYS_TIME");
        assert_eq!(canonical("all").unwrap(), "ALL");
        assert_eq!(
            canonical("NET_FLY").unwrap_err().to_string(),
            "unknown capability: \"NET_FLY\""
        );
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert!(DEFAULT.iter().all(|n| number(n).is_some()));
    }

    #[test]
    fn docker_s_rules() {
        assert_eq!(resolve(&[], &[]).unwrap(), default_set());
        // Docker's default set, as /proc/PID/status shows it in a container.
        assert_eq!(mask(&resolve(&[], &[]).unwrap()), 0xa80_425fb);
        let mut expected = default_set();
        expected.remove(&13);
        expected.insert(12);
        assert_eq!(
            resolve(&names(&["NET_ADMIN"]), &names(&["net_raw"])).unwrap(),
            expected
        );
        assert!(resolve(&[], &names(&["ALL"])).unwrap().is_empty());
        assert_eq!(
            resolve(&names(&["NET_BIND_SERVICE"]), &names(&["ALL"])).unwrap(),
            BTreeSet::from([10])
        );
        let all_but_admin = resolve(&names(&["ALL"]), &names(&["SYS_ADMIN"])).unwrap();
        assert_eq!(all_but_admin.len(), NAMES.len() - 1);
        assert!(!all_but_admin.contains(&21));
        // Added wins over dropped.
        assert!(
            resolve(&names(&["KILL"]), &names(&["KILL"]))
                .unwrap()
                .contains(&5)
        );
        assert!(resolve(&names(&["FLY"]), &[]).is_err());
    }
}
