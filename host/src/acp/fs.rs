//! `fs/read_text_file` and `fs/write_text_file`, confined to the child's workspace.

use agent_client_protocol::Error;
use serde_json::json;
use std::path::{Component, Path, PathBuf};

/// Largest file the agent may read or write through the client (agents read source files).
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// Resolves `path` to a location inside `root` (canonical), or refuses it. Symlinks are
/// resolved for the part that exists, so a link pointing outside the workspace is refused too.
pub fn confine(root: &Path, path: &Path) -> Result<PathBuf, Error> {
    if !path.is_absolute() {
        return Err(
            Error::invalid_params().data(json!({"path": path, "reason": "path must be absolute"}))
        );
    }
    let mut lexical = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::CurDir => {}
            other => lexical.push(other),
        }
    }
    // Canonicalise the longest existing ancestor; the rest does not exist yet (a new file).
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    let canonical = loop {
        match existing.canonicalize() {
            Ok(c) => break c,
            Err(_) => {
                // It exists but does not resolve: a dangling symlink (or a loop). Where it leads
                // cannot be checked, and writing through it would create its target anywhere.
                if existing.symlink_metadata().is_ok() {
                    return Err(Error::invalid_params().data(
                        json!({"path": path, "reason": "path goes through a symlink that does not resolve"}),
                    ));
                }
                rest.push(existing.file_name().map(|n| n.to_os_string()));
                existing = existing.parent().ok_or_else(|| outside(path))?;
            }
        }
    };
    let mut full = canonical;
    for part in rest.into_iter().rev() {
        full.push(part.ok_or_else(|| outside(path))?);
    }
    if full.starts_with(root) {
        Ok(full)
    } else {
        Err(outside(path))
    }
}

fn outside(path: &Path) -> Error {
    Error::invalid_params().data(json!({"path": path, "reason": "path is outside the workspace"}))
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::new(-32002, "Resource not found").data(json!({"path": path}))
    } else {
        Error::internal_error().data(json!({"path": path, "reason": e.to_string()}))
    }
}

/// Reads a file in the workspace. A file that does not exist (yet) reads as empty, as it does in
/// Zed (the reference ACP client opens a missing path inside its project as a new, empty buffer):
/// agents check a file through this read before writing it, and not all of them can tell an error
/// for "no such file" from a failure. gemini-cli 0.61 fails its write of a new file on any error
/// here (the ACP SDK hands it the JSON-RPC error as a plain object, which it cannot match as
/// ENOENT), while qwen-code and claude-code-acp are built against Zed's answer too. Paths outside
/// the workspace are still refused.
pub async fn read(
    root: &Path,
    path: &Path,
    line: Option<u32>,
    limit: Option<u32>,
) -> Result<String, Error> {
    let full = confine(root, path)?;
    let meta = match tokio::fs::metadata(&full).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(io_error(path, e)),
    };
    if meta.len() > MAX_FILE {
        return Err(Error::invalid_params().data(json!({"path": path, "reason": "file too large"})));
    }
    let text = tokio::fs::read_to_string(&full)
        .await
        .map_err(|e| io_error(path, e))?;
    if line.is_none() && limit.is_none() {
        return Ok(text);
    }
    let skip = line.map_or(0, |l| l.saturating_sub(1) as usize);
    let take = limit.map_or(usize::MAX, |l| l as usize);
    Ok(text.split_inclusive('\n').skip(skip).take(take).collect())
}

pub async fn write(root: &Path, path: &Path, content: &str) -> Result<(), Error> {
    if content.len() as u64 > MAX_FILE {
        return Err(
            Error::invalid_params().data(json!({"path": path, "reason": "content too large"}))
        );
    }
    let full = confine(root, path)?;
    if let Some(parent) = full.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io_error(path, e))?;
    }
    tokio::fs::write(&full, content)
        .await
        .map_err(|e| io_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confinement() {
        let dir = std::env::temp_dir().join(format!("acpd-fs-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let root = dir.canonicalize().unwrap();
        assert!(confine(&root, &root.join("sub/new.txt")).is_ok());
        assert!(confine(&root, &root.join("a/b/c.txt")).is_ok());
        assert!(confine(&root, &root.join("../x")).is_err());
        assert!(confine(&root, &root.join("sub/../../x")).is_err());
        assert!(confine(&root, Path::new("/etc/passwd")).is_err());
        assert!(confine(&root, Path::new("relative.txt")).is_err());
        std::os::unix::fs::symlink("/etc", root.join("link")).ok();
        assert!(confine(&root, &root.join("link/passwd")).is_err());
        std::os::unix::fs::symlink(dir.join("../acpd-fs-missing"), root.join("dangling")).ok();
        assert!(confine(&root, &root.join("dangling")).is_err());
        assert!(confine(&root, &root.join("dangling/new.txt")).is_err());
    }

    #[tokio::test]
    async fn a_missing_file_reads_as_empty_inside_the_workspace_only() {
        let dir = tempfile_dir("read");
        let root = dir.canonicalize().unwrap();
        std::fs::write(root.join("present.txt"), "a\nb\n").unwrap();
        assert_eq!(
            read(&root, &root.join("present.txt"), None, None)
                .await
                .unwrap(),
            "a\nb\n"
        );
        assert_eq!(
            read(&root, &root.join("absent.txt"), None, None)
                .await
                .unwrap(),
            ""
        );
        assert_eq!(
            read(&root, &root.join("no/such/dir/f.txt"), Some(2), Some(1))
                .await
                .unwrap(),
            ""
        );
        // Still an error: outside the workspace (missing or not), a directory, a path through a file.
        assert!(
            read(&root, &root.join("../absent-outside.txt"), None, None)
                .await
                .is_err()
        );
        assert!(read(&root, &root, None, None).await.is_err());
        assert!(
            read(&root, &root.join("present.txt/x"), None, None)
                .await
                .is_err()
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("acpd-fs-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
