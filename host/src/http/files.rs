//! The workspace file routes (`GET /file`, `/file/bytes`, `/stat`, `/list`, `/glob`): read-only,
//! on the primary workspace, confined to it as the agent's own file access is
//! (`acp::fs::confine`: `..` resolved, symlinks resolved, anything outside refused), aware of
//! `.gitignore` (the `ignore` crate), and bounded (window sizes, entries, matches, time).

use axum::Json;
use axum::extract::State;
use base64::Engine as _;
use ignore::gitignore::Gitignore;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::AppState;
use super::extract::Query;
use super::schema::{
    ErrorBody, WorkspaceFile, WorkspaceFileBytes, WorkspaceGlob, WorkspaceList, WorkspaceStat,
};
use crate::error::ApiError;

type Result<T> = std::result::Result<T, ApiError>;

/// Largest window `maxBytes` may ask for (text and bytes).
pub const MAX_WINDOW: u64 = 262_144;
/// Default window of `/file/bytes`.
pub const DEFAULT_BYTES_WINDOW: u64 = 65_536;
/// Most lines a text window may ask for.
pub const MAX_LINES: u64 = 2000;
/// Largest file `/file` decodes (a window of a larger one is 413 `file_too_large`; `/file/bytes`
/// reads any size).
pub const MAX_TEXT_FILE: u64 = 16 * 1024 * 1024;
/// Most entries `/list` returns.
pub const MAX_LIST: usize = 2000;
pub const DEFAULT_GLOB_RESULTS: u64 = 5000;
pub const MAX_GLOB_RESULTS: u64 = 50_000;
/// A glob stops (with `truncated`) after this long or this many visited entries.
pub const GLOB_DEADLINE: Duration = Duration::from_secs(10);
pub const GLOB_MAX_VISITED: usize = 500_000;
/// Longest `path`, `cwd` or `pattern` accepted.
const MAX_PATH_LEN: usize = 4096;

fn invalid_path(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "invalid_path", message)
}

fn invalid_query(message: impl Into<String>) -> ApiError {
    ApiError::new(400, "invalid_request", message)
}

fn io_error(rel: &str, e: &std::io::Error) -> ApiError {
    match e.kind() {
        std::io::ErrorKind::NotFound => not_found(rel),
        std::io::ErrorKind::PermissionDenied => ApiError::new(
            403,
            "permission_denied",
            "The daemon may not read this path",
        )
        .with("path", rel),
        _ => ApiError::new(503, "io_error", format!("I/O error: {e}"))
            .with("errorKind", "io_error")
            .with("retryable", true)
            .with("path", rel)
            .retry_after(1),
    }
}

fn not_found(rel: &str) -> ApiError {
    ApiError::new(404, "path_not_found", "No such file or directory")
        .with("errorKind", "missing_file")
        .with("path", rel)
}

/// A path inside the workspace.
struct Resolved {
    /// Canonical (symlinks resolved).
    full: PathBuf,
    /// `..` and `.` removed, symlinks kept (to report a symlink as one).
    lexical: PathBuf,
    /// Workspace-relative, `/`-separated (`.` for the root).
    rel: String,
}

fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

fn relative(root: &Path, full: &Path) -> String {
    let rel = full.strip_prefix(root).unwrap_or(full);
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join("/")
    }
}

/// Resolves a client's path (workspace-relative, or absolute inside the workspace); refuses
/// NUL bytes (400), anything outside the workspace after `..` and symlinks (403), and what does
/// not exist (404).
fn resolve(root: &Path, raw: &str, what: &str) -> Result<Resolved> {
    if raw.is_empty() {
        return Err(invalid_path(format!("{what} must not be empty")));
    }
    if raw.contains('\0') {
        return Err(invalid_path(format!("{what} contains a NUL byte")));
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(invalid_path(format!(
            "{what} is longer than {MAX_PATH_LEN} bytes"
        )));
    }
    let given = Path::new(raw);
    let joined = if given.is_absolute() {
        given.to_path_buf()
    } else {
        root.join(given)
    };
    let lexical = lexical(&joined);
    let full = crate::acp::fs::confine(root, &joined).map_err(|_| {
        ApiError::new(
            403,
            "path_outside_workspace",
            "The path is outside the workspace",
        )
        .with("path", raw)
    })?;
    let rel = relative(root, &full);
    if let Err(e) = std::fs::symlink_metadata(&full) {
        return Err(io_error(&rel, &e));
    }
    Ok(Resolved { full, lexical, rel })
}

// ---- .gitignore ---------------------------------------------------------------------------

/// How `.gitignore` rules treat a path: `file` when a rule matches the path itself,
/// `directory` when one matches a directory above it, none when nothing does (or a negation
/// re-includes it). The rules of every `.gitignore` from the workspace root down apply, the
/// deepest one that decides winning; `.git` itself is always ignored.
fn matched_ignore(root: &Path, full: &Path, is_dir: bool) -> Option<&'static str> {
    let rel = full.strip_prefix(root).ok()?;
    let comps: Vec<_> = rel.components().collect();
    if comps.iter().any(|c| c.as_os_str() == ".git") {
        return Some(if comps.last().is_some_and(|c| c.as_os_str() == ".git") {
            "file"
        } else {
            "directory"
        });
    }
    // Directories from the root to the path's parent.
    let mut dirs = vec![root.to_path_buf()];
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        let next = dirs.last().expect("non-empty").join(c.as_os_str());
        dirs.push(next);
    }
    let mut verdict = None;
    for dir in &dirs {
        let file = dir.join(".gitignore");
        if !file.is_file() {
            continue;
        }
        let (gi, _) = Gitignore::new(&file);
        // The path itself first; else its parents (a rule for a directory hides what is in it).
        let own = gi.matched(full, is_dir);
        if own.is_ignore() {
            verdict = Some("file");
            continue;
        }
        if own.is_whitelist() {
            verdict = None;
            continue;
        }
        let mut parent = full.parent();
        while let Some(p) = parent.filter(|p| p.starts_with(dir) && *p != dir.as_path()) {
            let m = gi.matched(p, true);
            if m.is_ignore() {
                verdict = Some("directory");
                break;
            }
            if m.is_whitelist() {
                break;
            }
            parent = p.parent();
        }
    }
    verdict
}

fn flag(v: Option<&str>, name: &str) -> Result<bool> {
    match v {
        None => Ok(false),
        Some("1" | "true") => Ok(true),
        Some("0" | "false") => Ok(false),
        Some(_) => Err(invalid_query(format!("{name} must be true, false or 1"))),
    }
}

fn number(
    v: Option<&str>,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>> {
    let Some(v) = v else { return Ok(None) };
    v.parse::<u64>()
        .ok()
        .filter(|n| range.contains(n))
        .map(Some)
        .ok_or_else(|| {
            invalid_query(format!(
                "{name} must be an integer from {} to {}",
                range.start(),
                range.end()
            ))
        })
}

fn hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn modified_ms(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    }
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ApiError::new(
            500,
            "internal_error",
            format!("file task failed: {e}"),
        ))
    })
}

fn root(state: &AppState) -> PathBuf {
    state.bridge.primary().cwd.clone()
}

// ---- GET /file ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileQuery {
    path: Option<String>,
    max_bytes: Option<String>,
    line: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// A text window: from `start` (a byte offset into the decoded text), at most `lines` lines and
/// `max_bytes` bytes (cut on a character boundary).
fn window(text: &str, start: usize, lines: Option<u64>, max_bytes: usize) -> (&str, usize) {
    let rest = &text[start..];
    let mut end = rest.len();
    if let Some(n) = lines {
        let mut seen = 0;
        for (i, b) in rest.bytes().enumerate() {
            if b == b'\n' {
                seen += 1;
                if seen == n {
                    end = i + 1;
                    break;
                }
            }
        }
    }
    if end > max_bytes {
        end = max_bytes;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
    }
    (&rest[..end], start + end)
}

fn read_text(root: &Path, q: FileQuery) -> Result<Value> {
    let raw = q.path.ok_or_else(|| invalid_query("path is required"))?;
    let max_bytes =
        number(q.max_bytes.as_deref(), "maxBytes", 1..=MAX_WINDOW)?.unwrap_or(MAX_WINDOW);
    let line = number(q.line.as_deref(), "line", 1..=u64::from(u32::MAX))?;
    let limit = number(q.limit.as_deref(), "limit", 1..=MAX_LINES)?;
    if q.cursor.is_some() && line.is_some() {
        return Err(invalid_query("cursor and line are exclusive"));
    }
    let r = resolve(root, &raw, "path")?;
    let meta = std::fs::metadata(&r.full).map_err(|e| io_error(&r.rel, &e))?;
    if !meta.is_file() {
        return Err(
            ApiError::new(400, "not_a_file", "The path is not a regular file")
                .with("path", r.rel.as_str()),
        );
    }
    if meta.len() > MAX_TEXT_FILE {
        return Err(ApiError::new(
            413,
            "file_too_large",
            format!("The file exceeds {MAX_TEXT_FILE} bytes: read it with GET /file/bytes"),
        )
        .with("errorKind", "budget_exhausted")
        .with("sizeBytes", meta.len())
        .with("path", r.rel.as_str()));
    }
    let bytes = std::fs::read(&r.full).map_err(|e| io_error(&r.rel, &e))?;
    let binary = || {
        ApiError::new(
            422,
            "binary_file",
            "The file is not UTF-8 text: read it with GET /file/bytes",
        )
        .with("errorKind", "binary_file")
        .with("path", r.rel.as_str())
    };
    if bytes[..bytes.len().min(8192)].contains(&0) {
        return Err(binary());
    }
    let bom = bytes.starts_with(&[0xEF, 0xBB, 0xBF]);
    let body = if bom { &bytes[3..] } else { &bytes[..] };
    let text = std::str::from_utf8(body).map_err(|_| binary())?;
    let digest = hash(&bytes);
    let start = match q.cursor.as_deref() {
        None => match line {
            None => 0,
            Some(l) => {
                // Byte offset of line `l` (past the end: an empty window).
                let mut offset = if l == 1 { Some(0) } else { None };
                let mut seen = 1;
                for (i, b) in text.bytes().enumerate() {
                    if b == b'\n' {
                        seen += 1;
                        if seen == l {
                            offset = Some(i + 1);
                            break;
                        }
                    }
                }
                offset.unwrap_or(text.len())
            }
        },
        Some(c) => {
            let bad = || ApiError::new(400, "invalid_cursor", "Malformed cursor");
            let (h, off) = c
                .strip_prefix("v1.")
                .and_then(|c| c.split_once('.'))
                .ok_or_else(bad)?;
            if h != &digest["sha256:".len().."sha256:".len() + 16] {
                return Err(ApiError::new(
                    409,
                    "file_changed",
                    "The file changed since this cursor was issued",
                )
                .with("path", r.rel.as_str()));
            }
            let off: usize = off.parse().map_err(|_| bad())?;
            if off > text.len() || !text.is_char_boundary(off) {
                return Err(bad());
            }
            off
        }
    };
    let (content, end) = window(text, start, limit, max_bytes as usize);
    let more = end < text.len();
    let crlf = text
        .find('\n')
        .is_some_and(|i| i > 0 && text.as_bytes()[i - 1] == b'\r');
    let lines = if text.is_empty() {
        0
    } else {
        text.bytes().filter(|b| *b == b'\n').count() + usize::from(!text.ends_with('\n'))
    };
    let is_dir = false;
    let mut out = json!({
        "kind": "file",
        "path": r.rel,
        "content": content,
        "encoding": "utf-8",
        "bom": bom,
        "lineEnding": if crlf { "crlf" } else { "lf" },
        "sizeBytes": meta.len(),
        "returnedBytes": content.len(),
        "truncated": content.len() < text.len(),
        "hash": digest,
        "matchedIgnore": matched_ignore(root, &r.full, is_dir),
        "originalLineCount": lines,
        "hasMore": more,
        "nextCursor": Value::Null,
    });
    if more {
        out["nextCursor"] = json!(format!(
            "v1.{}.{end}",
            &digest["sha256:".len().."sha256:".len() + 16]
        ));
    }
    Ok(out)
}

#[utoipa::path(get, path = "/file", tag = "workspace",
    params(("path" = String, Query, description = "Workspace-relative (or absolute inside the primary workspace)"),
           ("maxBytes" = Option<i64>, Query, description = "1-262144 (default 262144)"),
           ("line" = Option<i64>, Query, description = "First line (1-based)"),
           ("limit" = Option<i64>, Query, description = "Lines, 1-2000"),
           ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous window")),
    responses(
        (status = 200, description = "A UTF-8 text window", body = WorkspaceFile),
        (status = 400, description = "`invalid_request`, `invalid_path` (empty, NUL byte), `not_a_file`, `invalid_cursor`", body = ErrorBody),
        (status = 403, description = "`path_outside_workspace` (after `..` and symlinks), `permission_denied`", body = ErrorBody),
        (status = 404, description = "`path_not_found`", body = ErrorBody),
        (status = 409, description = "`file_changed`: the cursor's file changed", body = ErrorBody),
        (status = 413, description = "`file_too_large`: over 16 MiB (use `/file/bytes`)", body = ErrorBody),
        (status = 422, description = "`binary_file` (`errorKind: binary_file`): use `/file/bytes`", body = ErrorBody),
        (status = 500, description = "`internal_error`", body = ErrorBody),
    ))]
pub async fn read_file(
    State(state): State<AppState>,
    Query(q): Query<FileQuery>,
) -> Result<Json<Value>> {
    let root = root(&state);
    blocking(move || read_text(&root, q)).await.map(Json)
}

// ---- GET /file/bytes ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BytesQuery {
    path: Option<String>,
    offset: Option<String>,
    max_bytes: Option<String>,
}

fn read_bytes(root: &Path, q: BytesQuery) -> Result<Value> {
    let raw = q.path.ok_or_else(|| invalid_query("path is required"))?;
    let offset = number(q.offset.as_deref(), "offset", 0..=u64::MAX / 2)?.unwrap_or(0);
    let max =
        number(q.max_bytes.as_deref(), "maxBytes", 1..=MAX_WINDOW)?.unwrap_or(DEFAULT_BYTES_WINDOW);
    let r = resolve(root, &raw, "path")?;
    let mut f = std::fs::File::open(&r.full).map_err(|e| io_error(&r.rel, &e))?;
    let meta = f.metadata().map_err(|e| io_error(&r.rel, &e))?;
    if !meta.is_file() {
        return Err(
            ApiError::new(400, "not_a_file", "The path is not a regular file")
                .with("path", r.rel.as_str()),
        );
    }
    let size = meta.len();
    let mut buf = Vec::new();
    if offset < size {
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| io_error(&r.rel, &e))?;
        f.by_ref()
            .take(max)
            .read_to_end(&mut buf)
            .map_err(|e| io_error(&r.rel, &e))?;
    }
    let mut out = json!({
        "kind": "file_bytes",
        "path": r.rel,
        "offset": offset,
        "sizeBytes": size,
        "returnedBytes": buf.len(),
        "truncated": offset + (buf.len() as u64) < size,
        "contentBase64": base64::engine::general_purpose::STANDARD.encode(&buf),
    });
    // The whole file's hash, when it is cheap enough to compute.
    if size <= MAX_TEXT_FILE
        && let Ok(all) = std::fs::read(&r.full)
    {
        out["hash"] = json!(hash(&all));
    }
    Ok(out)
}

#[utoipa::path(get, path = "/file/bytes", tag = "workspace",
    params(("path" = String, Query, description = "Workspace-relative (or absolute inside the primary workspace)"),
           ("offset" = Option<i64>, Query, description = "Byte offset (default 0)"),
           ("maxBytes" = Option<i64>, Query, description = "1-262144 (default 65536)")),
    responses(
        (status = 200, description = "A raw byte window, base64", body = WorkspaceFileBytes),
        (status = 400, description = "`invalid_request`, `invalid_path`, `not_a_file`", body = ErrorBody),
        (status = 403, description = "`path_outside_workspace`, `permission_denied`", body = ErrorBody),
        (status = 404, description = "`path_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error`", body = ErrorBody),
    ))]
pub async fn read_file_bytes(
    State(state): State<AppState>,
    Query(q): Query<BytesQuery>,
) -> Result<Json<Value>> {
    let root = root(&state);
    blocking(move || read_bytes(&root, q)).await.map(Json)
}

// ---- GET /stat ----------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct StatQuery {
    path: Option<String>,
}

fn stat(root: &Path, q: StatQuery) -> Result<Value> {
    let raw = q.path.ok_or_else(|| invalid_query("path is required"))?;
    let r = resolve(root, &raw, "path")?;
    // A symlink (inside the workspace, to somewhere inside it) is reported as one.
    let link = std::fs::symlink_metadata(&r.lexical)
        .ok()
        .filter(|m| m.file_type().is_symlink());
    let meta = std::fs::metadata(&r.full).map_err(|e| io_error(&r.rel, &e))?;
    let kind = if link.is_some() {
        "symlink"
    } else {
        kind_of(meta.file_type())
    };
    let rel = if link.is_some() {
        relative(root, &r.lexical)
    } else {
        r.rel
    };
    Ok(json!({
        "kind": "stat",
        "path": rel,
        "type": kind,
        "sizeBytes": meta.len(),
        "modifiedMs": modified_ms(&meta),
    }))
}

#[utoipa::path(get, path = "/stat", tag = "workspace",
    params(("path" = String, Query, description = "Workspace-relative (or absolute inside the primary workspace)")),
    responses(
        (status = 200, description = "Type, size and modification time", body = WorkspaceStat),
        (status = 400, description = "`invalid_request`, `invalid_path`", body = ErrorBody),
        (status = 403, description = "`path_outside_workspace`", body = ErrorBody),
        (status = 404, description = "`path_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error`", body = ErrorBody),
    ))]
pub async fn stat_path(
    State(state): State<AppState>,
    Query(q): Query<StatQuery>,
) -> Result<Json<Value>> {
    let root = root(&state);
    blocking(move || stat(&root, q)).await.map(Json)
}

// ---- GET /list ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    path: Option<String>,
    include_ignored: Option<String>,
}

fn list(root: &Path, q: ListQuery) -> Result<Value> {
    let raw = q.path.unwrap_or_else(|| ".".into());
    let include = flag(q.include_ignored.as_deref(), "includeIgnored")?;
    let r = resolve(root, &raw, "path")?;
    let meta = std::fs::metadata(&r.full).map_err(|e| io_error(&r.rel, &e))?;
    if !meta.is_dir() {
        return Err(
            ApiError::new(400, "not_a_directory", "The path is not a directory")
                .with("path", r.rel.as_str()),
        );
    }
    let mut names: Vec<(String, std::fs::FileType)> = Vec::new();
    for entry in std::fs::read_dir(&r.full).map_err(|e| io_error(&r.rel, &e))? {
        let entry = entry.map_err(|e| io_error(&r.rel, &e))?;
        let Ok(ft) = entry.file_type() else { continue };
        names.push((entry.file_name().to_string_lossy().into_owned(), ft));
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut entries = Vec::new();
    let mut truncated = false;
    for (name, ft) in names {
        let path = r.full.join(&name);
        let ignored = matched_ignore(root, &path, ft.is_dir()).is_some();
        if ignored && !include {
            continue;
        }
        if entries.len() == MAX_LIST {
            truncated = true;
            break;
        }
        entries.push(json!({"name": name, "kind": kind_of(ft), "ignored": ignored}));
    }
    Ok(json!({
        "kind": "list",
        "path": r.rel,
        "entries": entries,
        "truncated": truncated,
        "matchedIgnore": null,
    }))
}

#[utoipa::path(get, path = "/list", tag = "workspace",
    params(("path" = Option<String>, Query, description = "A directory, workspace-relative (or absolute inside the primary workspace); default `.`"),
           ("includeIgnored" = Option<String>, Query, description = "`true`/`1`: include what .gitignore ignores (and `.git`)")),
    responses(
        (status = 200, description = "At most 2000 entries, by name", body = WorkspaceList),
        (status = 400, description = "`invalid_request`, `invalid_path`, `not_a_directory`", body = ErrorBody),
        (status = 403, description = "`path_outside_workspace`", body = ErrorBody),
        (status = 404, description = "`path_not_found`", body = ErrorBody),
        (status = 500, description = "`internal_error`", body = ErrorBody),
    ))]
pub async fn list_dir(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let root = root(&state);
    blocking(move || list(&root, q)).await.map(Json)
}

// ---- GET /glob ----------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobQuery {
    pattern: Option<String>,
    cwd: Option<String>,
    max_results: Option<String>,
    include_ignored: Option<String>,
}

fn glob(root: &Path, q: GlobQuery) -> Result<Value> {
    let started = Instant::now();
    let pattern = q
        .pattern
        .filter(|p| !p.is_empty())
        .ok_or_else(|| invalid_query("pattern is required"))?;
    if pattern.contains('\0') || pattern.len() > MAX_PATH_LEN {
        return Err(ApiError::new(
            400,
            "invalid_glob",
            "The pattern is malformed",
        ));
    }
    let max = number(q.max_results.as_deref(), "maxResults", 1..=MAX_GLOB_RESULTS)?
        .unwrap_or(DEFAULT_GLOB_RESULTS) as usize;
    let include = flag(q.include_ignored.as_deref(), "includeIgnored")?;
    let cwd = resolve(root, q.cwd.as_deref().unwrap_or("."), "cwd")?;
    if !cwd.full.is_dir() {
        return Err(
            ApiError::new(400, "not_a_directory", "cwd is not a directory")
                .with("cwd", cwd.rel.as_str()),
        );
    }
    let matcher = globset::GlobBuilder::new(pattern.trim_start_matches("./"))
        .literal_separator(true)
        .build()
        .map_err(|e| ApiError::new(400, "invalid_glob", format!("Invalid pattern: {e}")))?
        .compile_matcher();
    let walker = ignore::WalkBuilder::new(&cwd.full)
        .hidden(false)
        .ignore(!include)
        .git_ignore(!include)
        .git_exclude(!include)
        .git_global(false)
        .parents(!include)
        .require_git(false)
        .follow_links(false)
        .filter_entry(|e| e.file_name() != ".git")
        .build();
    let mut matches = Vec::new();
    let mut truncated = false;
    for (visited, entry) in walker.enumerate() {
        if visited >= GLOB_MAX_VISITED || started.elapsed() > GLOB_DEADLINE {
            truncated = true;
            break;
        }
        let Ok(entry) = entry else { continue };
        if entry.depth() == 0 {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(&cwd.full) else {
            continue;
        };
        if matcher.is_match(rel) {
            if matches.len() == max {
                truncated = true;
                break;
            }
            matches.push(relative(root, entry.path()));
        }
    }
    matches.sort();
    Ok(json!({
        "kind": "glob",
        "pattern": pattern,
        "cwd": cwd.rel,
        "count": matches.len(),
        "matches": matches,
        "truncated": truncated,
        "durationMs": started.elapsed().as_millis() as u64,
    }))
}

#[utoipa::path(get, path = "/glob", tag = "workspace",
    params(("pattern" = String, Query, description = "A glob relative to `cwd` (`*` stays within one directory, `**` crosses them)"),
           ("cwd" = Option<String>, Query, description = "Where to match from (default: the workspace root)"),
           ("maxResults" = Option<i64>, Query, description = "1-50000 (default 5000)"),
           ("includeIgnored" = Option<String>, Query, description = "`true`/`1`: include what .gitignore ignores")),
    responses(
        (status = 200, description = "Workspace-relative matches (`truncated` past `maxResults`, 500000 visited entries or 10 s)", body = WorkspaceGlob),
        (status = 400, description = "`invalid_request`, `invalid_glob`, `invalid_path`, `not_a_directory`", body = ErrorBody),
        (status = 403, description = "`path_outside_workspace`", body = ErrorBody),
        (status = 404, description = "`path_not_found`: `cwd` does not exist", body = ErrorBody),
        (status = 500, description = "`internal_error`", body = ErrorBody),
    ))]
pub async fn glob_paths(
    State(state): State<AppState>,
    Query(q): Query<GlobQuery>,
) -> Result<Json<Value>> {
    let root = root(&state);
    blocking(move || glob(&root, q)).await.map(Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cut_on_lines_and_characters() {
        let text = "a\nbb\nccc\n";
        assert_eq!(window(text, 0, Some(2), 100), ("a\nbb\n", 5));
        assert_eq!(window(text, 5, None, 100), ("ccc\n", 9));
        assert_eq!(window("héllo", 0, None, 2), ("h", 1));
    }

    #[test]
    fn gitignore_rules_apply_from_the_root_down() {
        let dir = std::env::temp_dir().join(format!("acpd-files-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("build/sub")).unwrap();
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join(".gitignore"), "build/\n*.log\n").unwrap();
        std::fs::write(dir.join("src/.gitignore"), "!keep.log\n").unwrap();
        let root = dir.canonicalize().unwrap();
        assert_eq!(
            matched_ignore(&root, &root.join("a.log"), false),
            Some("file")
        );
        assert_eq!(
            matched_ignore(&root, &root.join("build"), true),
            Some("file")
        );
        assert_eq!(
            matched_ignore(&root, &root.join("build/sub/x.rs"), false),
            Some("directory")
        );
        assert_eq!(
            matched_ignore(&root, &root.join("src/keep.log"), false),
            None
        );
        assert_eq!(
            matched_ignore(&root, &root.join("src/main.rs"), false),
            None
        );
        assert_eq!(
            matched_ignore(&root, &root.join(".git/config"), false),
            Some("directory")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
