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
