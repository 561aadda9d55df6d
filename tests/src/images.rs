//! Container images for the docker runtime's end-to-end tests, built on this machine (no
//! registry is reachable), and the docker engine they need.
//!
//! [`echo_image`] packs the workspace's `task-echo` (and the shared libraries `ldd` says
//! it needs) into a root filesystem and `docker import`s it as `mesh-echo:<tag>`, whose
//! default command is `/task-echo --port 80 --udp --tag <tag>`: two tags are two images
//! that answer differently, so moving a service from one to the other is an image update.
//! An image is rebuilt only when its contents would change (a digest of the binary, its
//! libraries and the tag, kept in the image's comment), so re-runs cost one `docker image
//! inspect`.
//!
//! [`ensure_docker`] checks that an engine answers: `cargo xtask setup` (which
//! `cargo xtask test` runs first) is the one place that installs and starts it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, Result, bail, ensure};

use crate::bin;

/// The repository of the images [`echo_image`] builds.
pub const ECHO_REPO: &str = "mesh-echo";

/// Builds run one at a time in this process (tests run on threads).
static BUILD: Mutex<()> = Mutex::new(());

/// Runs `docker ARGS`; its standard output, or an error with its standard error.
///
/// # Errors
/// If `docker` cannot run or fails.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run docker (is docker.io installed? `cargo xtask setup` installs it)")?;
    ensure!(
        out.status.success(),
        "docker {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Fails, saying what to do, unless a docker engine answers.
///
/// # Errors
/// When `docker info` fails: the engine is not installed or not running.
pub fn ensure_docker() -> Result<()> {
    ensure!(
        docker_answers(),
        "no docker engine answers: run `cargo xtask setup` (it installs docker.io and \
         starts dockerd)"
    );
    Ok(())
}

/// The files `ldd` lists as a program's shared libraries (the dynamic loader included),
/// in order, without duplicates; the vDSO (no file) is left out.
#[must_use]
pub fn ldd_libraries(ldd_output: &str) -> Vec<PathBuf> {
    let mut libs: Vec<PathBuf> = Vec::new();
    for line in ldd_output.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let target = match line.split_once("=>") {
            Some((_, right)) => right,
            None => line,
        };
        let Some(path) = target.split_whitespace().next() else {
            continue;
        };
        if path.starts_with('/') && !libs.iter().any(|l| l == Path::new(path)) {
            libs.push(PathBuf::from(path));
        }
    }
    libs
}

/// The default command of `mesh-echo:<tag>`, as a Dockerfile `CMD` in exec form.
fn echo_cmd(tag: &str) -> String {
    format!(r#"CMD ["/task-echo", "--port", "80", "--udp", "--tag", "{tag}"]"#)
}

/// A digest of what goes into an image: the files' paths and contents, and its command.
fn digest(files: &[PathBuf], cmd: &str) -> Result<String> {
    let mut h = DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(f)
            .with_context(|| format!("read {}", f.display()))?
            .hash(&mut h);
    }
    cmd.hash(&mut h);
    Ok(format!("{ECHO_REPO} {:016x}", h.finish()))
}

/// `mesh-echo:<tag>`, built unless an up-to-date one exists: `task-echo` (from
/// [`crate::bin_dir`]) as `/task-echo` with its shared libraries at their paths, default
/// command `/task-echo --port 80 --udp --tag <tag>` (the name comes from the task's
/// `MESH_TASK_NAME`). Starts the engine if needed ([`ensure_docker`]). Returns the image's
/// name.
///
/// # Errors
/// If `task-echo` is missing, the engine cannot be reached, or the import fails, or the
/// image built cannot run `task-echo`.
pub fn echo_image(tag: &str) -> Result<String> {
    ensure!(
        !tag.is_empty()
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
        "image tag {tag:?}: letters, digits, `_`, `.`, `-`"
    );
    build_echo(&format!("{ECHO_REPO}:{tag}"), &echo_cmd(tag))
}

/// The image [`standin_image`] builds.
pub const STANDIN_IMAGE: &str = "mesh-standin:1";

/// The entrypoint of [`STANDIN_IMAGE`]: task-echo on port 80, tagged `standin`, every
/// argument after `--` (a compose file's `command`) ignored.
const STANDIN_ENTRYPOINT: &str =
    r#"ENTRYPOINT ["/task-echo", "--port", "80", "--tag", "standin", "--"]"#;

/// [`STANDIN_IMAGE`], built unless an up-to-date one exists: the files of
/// [`echo_image`]'s images with an entrypoint that serves whatever command it is given,
/// a stand-in for the images of real-world stack files (`redis:alpine`,
/// `dockersamples/examplevotingapp_vote:before`) that no registry here can provide.
/// [`StandIns`] tags it with their names.
///
/// # Errors
/// As [`echo_image`].
pub fn standin_image() -> Result<String> {
    build_echo(STANDIN_IMAGE, STANDIN_ENTRYPOINT)
}

/// Names tagged onto [`STANDIN_IMAGE`] for a test, untagged when dropped. A name this
/// machine already has an image for is left alone (the real image is used).
#[derive(Debug, Default)]
pub struct StandIns {
    tagged: Vec<String>,
}

impl StandIns {
    /// Tags the stand-in with each of `names` this machine has no image for.
    ///
    /// # Errors
    /// If the stand-in cannot be built or tagged.
    pub fn tag(&mut self, names: &[String]) -> Result<()> {
        let image = standin_image()?;
        for name in names {
            if self.tagged.contains(name) || docker(&["image", "inspect", name]).is_ok() {
                continue;
            }
            docker(&["tag", &image, name])?;
            self.tagged.push(name.clone());
        }
        Ok(())
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        for name in &self.tagged {
            // Untags only: the stand-in's layers stay for the next run.
            let _ = docker(&["rmi", name]);
        }
    }
}

/// Builds `image` from `task-echo` and its libraries with the Dockerfile instruction
/// `change` (its command or entrypoint), unless an up-to-date one exists.
fn build_echo(image: &str, change: &str) -> Result<String> {
    let _build = BUILD.lock().unwrap_or_else(PoisonError::into_inner);
    ensure_docker()?;
    let echo = bin("task-echo")?;
    let ldd = Command::new("ldd")
        .arg(&echo)
        .stdin(Stdio::null())
        .output()
        .context("run ldd")?;
    // A static binary: `ldd` says "not a dynamic executable" and fails; no libraries.
    let libs = ldd_libraries(&String::from_utf8_lossy(&ldd.stdout));
    let mut files = vec![echo.clone()];
    files.extend(libs.iter().cloned());
    let want = digest(&files, change)?;
    let have = docker(&["image", "inspect", "--format", "{{.Comment}}", image]).ok();
    if have.as_deref().map(str::trim) == Some(want.as_str()) {
        return Ok(image.to_owned());
    }

    let dir_name: String = image
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let root = std::env::temp_dir().join(format!("mesh-rootfs-{}-{dir_name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let built = build(&root, &echo, &libs, change, &want, image);
    let _ = std::fs::remove_dir_all(&root);
    built?;
    smoke_test(image)?;
    Ok(image.to_owned())
}

/// Lays out the root filesystem under `root` and imports it as `image`.
fn build(
    root: &Path,
    echo: &Path,
    libs: &[PathBuf],
    cmd: &str,
    comment: &str,
    image: &str,
) -> Result<()> {
    for dir in ["tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    std::fs::copy(echo, root.join("task-echo"))
        .with_context(|| format!("copy {}", echo.display()))?;
    for lib in libs {
        let to = root.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // `copy` follows symlinks: the library's contents under the name ldd resolved.
        std::fs::copy(lib, &to).with_context(|| format!("copy {}", lib.display()))?;
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["-c", "."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("run tar")?;
    let archive = tar.stdout.take().context("tar's output")?;
    let import = Command::new("docker")
        .args(["import", "--change", cmd, "--message", comment, "-", image])
        .stdin(archive)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run docker import")?;
    let tar_status = tar.wait()?;
    ensure!(tar_status.success(), "tar of {} failed", root.display());
    ensure!(
        import.status.success(),
        "docker import of {image} failed: {}",
        String::from_utf8_lossy(&import.stderr).trim()
    );
    Ok(())
}

/// Runs `/task-echo --help` in a throwaway container of `image`: it prints its usage when
/// the binary and its libraries load.
fn smoke_test(image: &str) -> Result<()> {
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/task-echo",
            image,
            "--help",
        ])
        .stdin(Stdio::null())
        .output()
        .context("run docker run")?;
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.contains("usage: task-echo") {
        bail!(
            "{image} cannot run task-echo ({}): {}{}",
            out.status,
            err.trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libraries_from_ldd() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f75)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f74)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f76)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f74)\n";
        assert_eq!(
            ldd_libraries(out),
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(ldd_libraries("\tnot a dynamic executable\n").is_empty());
        assert!(ldd_libraries("\tlibfoo.so => not found\n").is_empty());
    }

    #[test]
    fn the_command_carries_the_tag() {
        assert_eq!(
            echo_cmd("v2"),
            r#"CMD ["/task-echo", "--port", "80", "--udp", "--tag", "v2"]"#
        );
    }
}
