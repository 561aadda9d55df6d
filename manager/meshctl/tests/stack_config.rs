//! `meshctl stack config` as a user runs it: files on disk and stdin, merged and
//! interpolated from the environment, printed as YAML; errors on stderr with the
//! file, line and key, and a non-zero exit. No cluster is needed.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// A fresh directory for one test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("meshctl-stack-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

fn meshctl(dir: &PathBuf, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .current_dir(dir)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("TAG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshctl runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("meshctl exits")
}

#[test]
fn stack_config_prints_the_merged_interpolated_file() {
    let dir = scratch("merge");
    std::fs::write(
        dir.join("app.yml"),
        "version: '3.8'\nservices:\n  web:\n    image: nginx:${TAG:-latest}\n    build: .\n    env_file: web.env\n    ports: ['8080:80']\n    deploy:\n      replicas: 2\n",
    )
    .unwrap();
    std::fs::write(dir.join("web.env"), "MODE=prod\n").unwrap();
    std::fs::write(
        dir.join("prod.yml"),
        "services:\n  web:\n    deploy:\n      replicas: ${REPLICAS}\n",
    )
    .unwrap();
    let out = meshctl(
        &dir,
        &[
            "stack",
            "config",
            "-c",
            "app.yml",
            "--compose-file",
            "prod.yml",
        ],
        &[("REPLICAS", "5")],
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.trim(), "Ignoring unsupported options: build");
    assert!(
        stdout.starts_with("version: \"3.8\"\nservices:\n  web:\n"),
        "{stdout}"
    );
    assert!(stdout.contains("    image: nginx:latest\n"), "{stdout}");
    assert!(stdout.contains("      replicas: 5\n"), "{stdout}");
    assert!(
        stdout.contains("    environment:\n      MODE: prod\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("        published: 8080\n        target: 80\n"),
        "{stdout}"
    );

    // What it prints is a compose file that prints the same again.
    let out2 = meshctl(&dir, &["stack", "config", "-c", "-"], &[], &stdout);
    assert!(
        out2.status.success(),
        "{}",
        String::from_utf8_lossy(&out2.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out2.stdout), stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stack_config_refuses_bad_files_naming_the_place() {
    let dir = scratch("errors");
    let out = meshctl(
        &dir,
        &["stack", "config", "-c", "-"],
        &[],
        "services:\n  web:\n    image: \"app:${TAG:?set it}\"\n",
    );
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error: -:3: services.web.image: required variable TAG is missing a value: set it"
    );
    std::fs::write(
        dir.join("app.yml"),
        "services:\n  web:\n    image: a\n    deploy:\n      replicas: many\n",
    )
    .unwrap();
    let out = meshctl(&dir, &["stack", "config", "-c", "app.yml"], &[], "");
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "Error: app.yml:5: services.web.deploy.replicas: must be an integer"
    );
    let out = meshctl(&dir, &["stack", "config"], &[], "");
    assert!(!out.status.success(), "-c is required");
    let _ = std::fs::remove_dir_all(&dir);
}
