//! WASM guests built from source in the test run: first-party plugins, the example plugin and
//! the hostile test fixtures, for `wasm32-wasip2`, once per test process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

fn root() -> PathBuf {
    crate::manifest_dir()
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `<target>/wasm-guests`, the directory the daemon's build script also builds guests in.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/<profile>/deps/<test>
    exe.ancestors()
        .nth(3)
        .expect("target dir")
        .join("wasm-guests")
}

fn build(key: &str, args: &[&str], artifact: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(key) {
        return p.clone();
    }
    let dir = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(root())
        .args(["build", "-q", "--target", "wasm32-wasip2"])
        .args(args)
        .arg("--target-dir")
        .arg(&dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("run cargo build for a wasm guest");
    assert!(
        out.status.success(),
        "building {key} for wasm32-wasip2 failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("wasm32-wasip2").join(artifact);
    assert!(path.is_file(), "{} was not produced", path.display());
    built.insert(key.to_string(), path.clone());
    path
}

/// A workspace guest crate (`plugins/*`, `tests/plugins/*`), built with the `guest` profile.
pub fn guest(package: &str) -> PathBuf {
    build(
        package,
        &["--profile", "guest", "-p", package],
        &format!("guest/{}.wasm", package.replace('-', "_")),
    )
}

/// The example plugin project (`examples/ticket-redact`, its own workspace), built the way its
/// README says.
pub fn example() -> PathBuf {
    let manifest = root().join("examples/ticket-redact/Cargo.toml");
    build(
        "ticket-redact",
        &["--release", "--manifest-path", manifest.to_str().unwrap()],
        "release/ticket_redact.wasm",
    )
}

/// The hostile fixture (`tests/plugins/hostile`): one component, its misbehaviour chosen by
/// its config's `mode`.
pub fn hostile() -> PathBuf {
    guest("acpd-test-hostile")
}

/// The printer fixture (`tests/plugins/printer`): writes to stderr at every request-path call
/// (`mode = "print"`), or panics there (`mode = "panic"`), importing no sockets or files.
pub fn printer() -> PathBuf {
    guest("acpd-test-printer")
}

/// Every file under `dirs` (relative to the root), hashed with the toolchain that builds them:
/// the cache key of an interpreter guest, so each is built once, not once per test process.
fn source_hash(dirs: &[&str], tool: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    fn walk(p: &std::path::Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == "node_modules" || name == "__pycache__" || name.ends_with(".wasm") {
                continue;
            }
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for d in dirs {
        walk(&root().join(d), &mut files);
    }
    files.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tool.hash(&mut h);
    for f in files {
        f.strip_prefix(root()).unwrap_or(&f).hash(&mut h);
        std::fs::read(&f).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

/// Builds an interpreter guest with `cmd` (run from the workspace root, writing `out`) unless
/// the same sources were built before; then compiles it once with `acpd plugin inspect`, so the
/// tests' daemons load it from the compile cache instead of each compiling tens of MB at once.
fn build_interpreter_guest(
    name: &str,
    sources: &[&str],
    tool: &str,
    cmd: impl FnOnce(&std::path::Path) -> std::process::Command,
) -> Result<PathBuf, String> {
    static BUILT: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = built.get(name) {
        return r.clone();
    }
    let dir = target_dir().join("interpreter-guests");
    let out = dir.join(format!("{name}-{:016x}.wasm", source_hash(sources, tool)));
    let r = (|| {
        if !out.is_file() {
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let tmp = out.with_extension(format!("{}.tmp.wasm", std::process::id()));
            let o = cmd(&tmp)
                .current_dir(root())
                .output()
                .map_err(|e| format!("{tool}: {e}"))?;
            if !o.status.success() || !tmp.is_file() {
                return Err(format!(
                    "building {name} with {tool} failed:\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ));
            }
            std::fs::rename(&tmp, &out).map_err(|e| e.to_string())?;
        }
        let o = std::process::Command::new(crate::acpd_bin())
            .args(["plugin", "inspect"])
            .arg(&out)
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!(
                "acpd plugin inspect {name}:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(out)
    })();
    built.insert(name.to_string(), r.clone());
    r
}

/// A Python guest: `app` module in `dir`, with the SDK (`sdk/python`), for WIT world `world`.
/// `Err` is why it cannot be built here (the toolchain is not installed: tests skip).
pub fn python(name: &str, dir: &str, world: &str) -> Result<PathBuf, String> {
    let tool = std::env::var("ACPD_COMPONENTIZE_PY").map_err(|_| {
        "ACPD_COMPONENTIZE_PY is not set (tests/scripts/install-guest-toolchains.sh installs componentize-py)"
            .to_string()
    })?;
    build_interpreter_guest(name, &[dir, "sdk/python", "wit"], &tool, |out| {
        let mut c = std::process::Command::new(&tool);
        c.args(["-d", "wit", "-w", world, "componentize", "-p", dir])
            .args(["-p", "sdk/python", "app", "-o"])
            .arg(out);
        c
    })
}

/// A JavaScript guest: entry module `entry` (with the SDK, `sdk/js`), for WIT world `world`.
pub fn javascript(name: &str, entry: &str, world: &str) -> Result<PathBuf, String> {
    let tool = std::env::var("ACPD_COMPONENTIZE_JS").map_err(|_| {
        "ACPD_COMPONENTIZE_JS is not set (tests/scripts/install-guest-toolchains.sh installs componentize-js)"
            .to_string()
    })?;
    let dir = std::path::Path::new(entry)
        .parent()
        .and_then(|p| p.to_str())
        .unwrap_or(".")
        .to_string();
    let node = std::env::var("ACPD_NODE22").unwrap_or_else(|_| "node".into());
    build_interpreter_guest(name, &[&dir, "sdk/js", "wit"], &tool, |out| {
        let mut c = std::process::Command::new(&node);
        // wasi:http and the fetch event are not in acpd's sandbox: leave them out.
        c.arg(&tool)
            .args([
                "--wit",
                "wit",
                "--world-name",
                world,
                "-d",
                "http",
                "fetch-event",
                "-o",
            ])
            .arg(out)
            .arg(entry);
        c
    })
}

/// The Python example plugin (`examples/ticket-redact-py`).
pub fn python_example() -> Result<PathBuf, String> {
    python("ticket-redact-py", "examples/ticket-redact-py", "redactor")
}

/// The JavaScript example plugin (`examples/ticket-redact-js`).
pub fn javascript_example() -> Result<PathBuf, String> {
    javascript(
        "ticket-redact-js",
        "examples/ticket-redact-js/plugin.js",
        "redactor",
    )
}

/// The hostile Python fixture (`tests/plugins/hostile-py`), its misbehaviour chosen by `mode`.
pub fn hostile_python() -> Result<PathBuf, String> {
    python("hostile-py", "tests/plugins/hostile-py", "all-hooks")
}

/// The hostile JavaScript fixture (`tests/plugins/hostile-js`).
pub fn hostile_javascript() -> Result<PathBuf, String> {
    javascript(
        "hostile-js",
        "tests/plugins/hostile-js/plugin.js",
        "all-hooks",
    )
}
