//! `meshctl completion` and `meshctl man` as a user installs them: each
//! completion script, loaded into the real shell, completes commands,
//! subcommands, flags and values; the man pages cover every command and
//! render with groff without a warning. No cluster is needed. A shell that is
//! not installed fails its test and names the package (`cargo xtask setup`
//! installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshctl-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn meshctl(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .expect("meshctl runs");
    assert!(
        out.status.success(),
        "meshctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `meshctl completion <shell>`, written to `dir`.
fn script(shell: &str, dir: &Path) -> PathBuf {
    let path = dir.join(format!("meshctl.{shell}"));
    std::fs::write(&path, meshctl(&["completion", shell]).stdout).expect("writing the script");
    path
}

/// Runs `shell` with `args`; fails the test with the package to install when
/// the shell is missing.
fn run_shell(shell: &str, args: &[&str]) -> String {
    let out = Command::new(shell).args(args).output().unwrap_or_else(|e| {
        panic!("{shell} does not run ({e}): install Debian's `{shell}` package (cargo xtask setup does)")
    });
    assert!(
        out.status.success(),
        "{shell} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[test]
fn bash_completes_commands_subcommands_flags_and_values() {
    let dir = scratch("bash");
    let script = script("bash", &dir);
    // What bash does on TAB: COMP_WORDS and COMP_CWORD set, then the function
    // that `complete -F` registered, with the command, the word and the one
    // before; one line of candidates per line typed.
    let program = format!(
        r#"source '{}'
complete -p meshctl
comp() {{
    COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); COMP_LINE="$*"; COMP_POINT=${{#COMP_LINE}}
    COMPREPLY=()
    _meshctl meshctl "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
    echo "${{COMPREPLY[*]}}"
}}
comp meshctl ser
comp meshctl service cr
comp meshctl service create --lb
comp meshctl stack de
comp meshctl completion ''
"#,
        script.display()
    );
    let out = run_shell("bash", &["--norc", "--noprofile", "-c", &program]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(
        lines[0].starts_with("complete ") && lines[0].ends_with(" -F _meshctl meshctl"),
        "{}",
        lines[0]
    );
    assert_eq!(lines[1], "service");
    assert_eq!(lines[2], "create");
    assert_eq!(lines[3], "--lb-algorithm");
    assert_eq!(lines[4], "deploy");
    let shells: Vec<&str> = lines[5].split(' ').collect();
    for shell in ["bash", "zsh", "fish"] {
        assert!(shells.contains(&shell), "{shell} not offered: {}", lines[5]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fish_completes_commands_subcommands_and_flags_with_their_help() {
    let dir = scratch("fish");
    let script = script("fish", &dir);
    let program = format!(
        r#"source '{}'
complete -C 'meshctl serv'
echo ==
complete -C 'meshctl service create --lb'
echo ==
complete -C 'meshctl stack '
"#,
        script.display()
    );
    let out = run_shell("fish", &["--no-config", "-c", &program]);
    let parts: Vec<&str> = out.split("==\n").collect();
    assert_eq!(parts.len(), 3, "{out}");
    assert_eq!(parts[0].trim_end(), "service\tManage services");
    assert!(
        parts[1].starts_with("--lb-algorithm\tHow new connections choose a task"),
        "{}",
        parts[1]
    );
    let verbs: Vec<&str> = parts[2]
        .lines()
        .map(|l| l.split('\t').next().unwrap_or_default())
        .collect();
    for verb in ["deploy", "ls", "ps", "rm", "services", "config"] {
        assert!(verbs.contains(&verb), "stack {verb} not offered: {verbs:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn zsh_loads_the_script_and_registers_it_for_meshctl() {
    let dir = scratch("zsh");
    let script = script("zsh", &dir);
    // compinit, as a user's .zshrc runs it; then the script defines _meshctl
    // and binds it to meshctl (driving zsh's completion widget needs a
    // terminal, which bash's and fish's checks above do without).
    let program = format!(
        "autoload -Uz compinit && compinit -u -D\nsource '{}'\nprint -r -- ${{+functions[_meshctl]}} $_comps[meshctl]",
        script.display()
    );
    let out = run_shell("zsh", &["-f", "-c", &program]);
    assert_eq!(out.trim(), "1 _meshctl");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn man_pages_cover_every_command_and_render_without_warnings() {
    let dir = scratch("man");
    let out = meshctl(&["man", "--dir", dir.to_str().expect("UTF-8 path")]);
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .expect("the man directory")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    pages.sort();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{} man pages in {}", pages.len(), dir.display())
    );
    for page in [
        "meshctl.1",
        "meshctl-service-create.1",
        "meshctl-service-update.1",
        "meshctl-stack-deploy.1",
        "meshctl-node-update.1",
        "meshctl-secret-create.1",
        "meshctl-network-create.1",
        "meshctl-completion.1",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} missing: {pages:?}");
    }
    // Every command the top-level help lists has its page.
    let help = String::from_utf8(meshctl(&["--help"]).stdout).expect("UTF-8 help");
    let commands: Vec<&str> = help
        .split("Commands:\n")
        .nth(1)
        .expect("a Commands section")
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 8, "{help}");
    for command in commands {
        let page = format!("meshctl-{command}.1");
        assert!(pages.contains(&page), "{page} missing: {pages:?}");
    }
    // The page a user opens most, rendered as `man` would: no warning, the
    // flags documented.
    for page in &pages {
        let out = Command::new("groff")
            // Plain text: no bold, underline or overstrike.
            .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
            .arg(dir.join(page))
            .output()
            .expect("groff runs: install Debian's `groff-base` package (cargo xtask setup does)");
        assert!(out.status.success(), "groff failed on {page}");
        assert!(
            out.stderr.is_empty(),
            "groff warns on {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if page == "meshctl-service-create.1" {
            // groff prints a hyphen as U+2010 where it may break a line.
            let text = String::from_utf8_lossy(&out.stdout).replace('\u{2010}', "-");
            for flag in ["--publish", "--replicas", "--update-order", "--secret"] {
                assert!(text.contains(flag), "{flag} not in {page}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
