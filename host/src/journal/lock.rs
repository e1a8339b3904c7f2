//! One daemon owns a state directory: an exclusive `flock` on `<state dir>/acpd.lock`, held for
//! the life of the process (the kernel releases it when the process ends, however it ends).

use nix::fcntl::{Flock, FlockArg};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The held lock; dropping it releases the directory.
pub struct StateLock {
    _lock: Flock<File>,
    pub path: PathBuf,
}

/// Why the directory could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it (its pid, when it wrote one).
    Held { path: PathBuf, pid: Option<u32> },
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { path, pid } => write!(
                f,
                "state directory {} is in use by another acpd{} (one daemon per state directory: set another with --state-dir or ACPD_STATE_DIR)",
                path.parent().unwrap_or(path).display(),
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
            ),
            LockError::Io { path, error } => {
                write!(
                    f,
                    "cannot lock the state directory ({}): {error}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for LockError {}

/// Creates `dir` (mode 0700) and takes its lock without waiting.
pub fn lock(dir: &Path) -> Result<StateLock, LockError> {
    let path = dir.join("acpd.lock");
    let io = |error| LockError::Io {
        path: path.clone(),
        error,
    };
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(LockError::Held {
                path,
                pid: text.trim().parse().ok(),
            });
        }
        Err((_, e)) => return Err(io(std::io::Error::from(e))),
    };
    // The holder's pid, for the message another daemon prints.
    let _ = lock.set_len(0);
    let _ = lock.seek(SeekFrom::Start(0));
    let _ = writeln!(lock, "{}", std::process::id());
    Ok(StateLock { _lock: lock, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_pid() {
        let dir = std::env::temp_dir().join(format!("acpd-lock-{}", uuid::Uuid::new_v4()));
        let held = lock(&dir).unwrap();
        match lock(&dir) {
            Err(LockError::Held { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("{:?}", other.err()),
        }
        drop(held);
        assert!(lock(&dir).is_ok(), "released on drop");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
