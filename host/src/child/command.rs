//! Whether the agent command can be started at all. A program that is missing or cannot be
//! executed fails every spawn the same way until the operator fixes the configuration, so it is
//! reported as such (a distinct, non-retryable error naming the command, and a degraded
//! `/health`) rather than as a temporary outage that a client should retry.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::SpawnSpec;

/// A spawn that cannot succeed as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnFailure {
    /// The program as configured (its arguments are left out: they may carry secrets).
    pub command: String,
    /// `not_found` or `not_executable`.
    pub reason: &'static str,
    /// One line for people: what is wrong and with which command.
    pub message: String,
}

impl SpawnFailure {
    fn new(command: &str, reason: &'static str, detail: impl std::fmt::Display) -> Self {
        let what = match reason {
            "not_found" => "not found",
            _ => "cannot be executed",
        };
        Self {
            command: command.to_string(),
            reason,
            message: format!("agent command `{command}` {what}: {detail}"),
        }
    }
}

/// The failure `e` of spawning `program`, when it is one no retry can cure: the program (or an
/// interpreter its `#!` line names) does not exist, or is not an executable file.
pub fn permanent(program: &str, e: &io::Error) -> Option<SpawnFailure> {
    let reason = match e.raw_os_error()? {
        libc_errno::ENOENT | libc_errno::ENOTDIR => "not_found",
        libc_errno::EACCES | libc_errno::ENOEXEC | libc_errno::EISDIR | libc_errno::ELOOP => {
            "not_executable"
        }
        _ => return None,
    };
    Some(SpawnFailure::new(program, reason, e))
}

/// Checks, without starting anything, that `spec.program` resolves to an executable file the way
/// the spawn will resolve it: a name with a `/` relative to the child's working directory, a bare
/// name through the `PATH` the child gets. Used at start-up so `/health` reports a missing agent
/// before the first session asks for it.
pub fn probe(spec: &SpawnSpec) -> Result<PathBuf, SpawnFailure> {
    let program = spec.program.as_str();
    if program.contains('/') {
        let path = spec.cwd.join(program);
        return executable(&path)
            .map(|()| path)
            .map_err(|(reason, detail)| SpawnFailure::new(program, reason, detail));
    }
    let path_var = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default();
    let mut refused = None;
    for dir in std::env::split_paths(&path_var) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = spec.cwd.join(dir).join(program);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(("not_executable", detail)) => refused = refused.or(Some(detail)),
            Err(_) => {}
        }
    }
    Err(match refused {
        // Like execvp: a match that is not executable is reported when nothing better exists.
        Some(detail) => SpawnFailure::new(program, "not_executable", detail),
        None => SpawnFailure::new(program, "not_found", "no such file in PATH"),
    })
}

fn executable(path: &Path) -> Result<(), (&'static str, String)> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err((
            "not_executable",
            format!("{} is a directory", path.display()),
        )),
        Ok(m) if m.permissions().mode() & 0o111 == 0 => Err((
            "not_executable",
            format!("{} has no execute permission", path.display()),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            Err(("not_executable", format!("{}: {e}", path.display())))
        }
        Err(e) => Err(("not_found", format!("{}: {e}", path.display()))),
    }
}

/// The errno values this module tells apart (Linux; the daemon runs on Linux only).
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const ENOEXEC: i32 = 8;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const ELOOP: i32 = 40;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, cwd: &Path, path: &str) -> SpawnSpec {
        SpawnSpec {
            program: program.into(),
            args: vec!["--secret-arg".into()],
            cwd: cwd.to_path_buf(),
            env: vec![("PATH".into(), path.into())],
            nice: 0,
        }
    }

    #[test]
    fn probe_resolves_like_the_spawn() {
        let dir = std::env::temp_dir().join(format!("acpd-probe-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        let exe = dir.join("bin/agent");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.join("bin/plain");
        std::fs::write(&plain, "").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let bin = dir.join("bin").display().to_string();

        assert_eq!(probe(&spec("agent", &dir, &bin)).unwrap(), exe);
        assert_eq!(probe(&spec("bin/agent", &dir, "")).unwrap(), exe);
        assert!(probe(&spec(&exe.display().to_string(), Path::new("/"), "")).is_ok());

        let missing = probe(&spec("no-such-agent", &dir, &bin)).unwrap_err();
        assert_eq!(missing.reason, "not_found");
        assert_eq!(missing.command, "no-such-agent");
        assert!(
            missing.message.contains("`no-such-agent`"),
            "{}",
            missing.message
        );
        assert!(!missing.message.contains("secret"), "arguments stay out");
        assert_eq!(
            probe(&spec("./bin/missing", &dir, "")).unwrap_err().reason,
            "not_found"
        );
        assert_eq!(
            probe(&spec("plain", &dir, &bin)).unwrap_err().reason,
            "not_executable"
        );
        assert_eq!(
            probe(&spec("bin", &dir, "")).unwrap_err().reason,
            "not_executable"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn only_errors_no_retry_can_cure_are_permanent() {
        let enoent = io::Error::from_raw_os_error(2);
        assert_eq!(permanent("qwen", &enoent).unwrap().reason, "not_found");
        let eacces = io::Error::from_raw_os_error(13);
        assert_eq!(permanent("qwen", &eacces).unwrap().reason, "not_executable");
        // Out of processes or memory: temporary.
        assert!(permanent("qwen", &io::Error::from_raw_os_error(11)).is_none());
        assert!(permanent("qwen", &io::Error::from_raw_os_error(12)).is_none());
        assert!(permanent("qwen", &io::Error::other("no pipe")).is_none());
    }
}
