//! Builds the first-party plugins (`plugins/*`) for `wasm32-wasip2` and embeds them, so the
//! binary runs its default plugin set with no files beside it. A machine without the wasm
//! target still builds the daemon: the plugins are then missing, and the daemon says so.
//!
//! It also has the release link place the daemon's hot functions first (`link/hot-symbols.txt`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGINS: &[(&str, &str)] = &[
    ("redact", "acpd-plugin-redact"),
    ("enrich", "acpd-plugin-enrich"),
    ("errors", "acpd-plugin-errors"),
];

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("builtin");
    std::fs::create_dir_all(&out).unwrap();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-env-changed=ACPD_SKIP_BUILTIN_PLUGINS");
    // Installing a target rewrites rustup's list of the toolchain's components: a build made
    // before the wasm target was there (its plugins missing) is made again once it is, instead
    // of every later build embedding none.
    if let Some(components) = sysroot().map(|s| s.join("lib/rustlib/components"))
        && components.is_file()
    {
        println!("cargo:rerun-if-changed={}", components.display());
    }
    symbol_order(&manifest);

    let mut notes = Vec::new();
    for (name, package) in PLUGINS {
        let dest = out.join(format!("{name}.wasm"));
        if env::var_os("ACPD_SKIP_BUILTIN_PLUGINS").is_some() {
            std::fs::write(&dest, b"").unwrap();
            notes.push(format!("{name}: skipped (ACPD_SKIP_BUILTIN_PLUGINS)"));
            continue;
        }
        match build(&root, &guest_target_dir(), package) {
            Ok(wasm) => {
                std::fs::copy(&wasm, &dest).unwrap();
            }
            Err(e) => {
                std::fs::write(&dest, b"").unwrap();
                println!("cargo:warning=built-in plugin {name} not embedded: {e}");
                notes.push(format!("{name}: {e}"));
            }
        }
    }
    let note = if notes.is_empty() {
        "all built".to_string()
    } else {
        notes.join("; ").replace('\n', " ")
    };
    println!("cargo:rustc-env=ACPD_BUILTIN_PLUGINS_NOTE={note}");
}

/// `<target>/wasm-guests`: beside the host's own artifacts, shared with the tests' builds of
/// their plugins, never the directory the outer cargo holds locked.
fn guest_target_dir() -> PathBuf {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    // OUT_DIR = <target>[/<triple>]/<profile>/build/<pkg>-<hash>/out
    let profile_dir = out.ancestors().nth(3).unwrap();
    profile_dir
        .parent()
        .unwrap_or(profile_dir)
        .join("wasm-guests")
}

fn build(root: &Path, target_dir: &Path, package: &str) -> Result<PathBuf, String> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--quiet",
            "--target",
            "wasm32-wasip2",
            "--profile",
            "guest",
            "-p",
            package,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    // The outer build's settings are for the host, not for a wasm guest.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let output = cmd.output().map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(tail.into_iter().rev().collect::<Vec<_>>().join(" | "));
    }
    let wasm = target_dir
        .join("wasm32-wasip2/guest")
        .join(format!("{}.wasm", package.replace('-', "_")));
    if wasm.is_file() {
        Ok(wasm)
    } else {
        Err(format!("{} not produced", wasm.display()))
    }
}

/// The functions a running daemon uses (start-up, serving, shutdown: `link/hot-symbols.txt`, made
/// by `tests/scripts/hot-symbols.sh`) are linked first and together. Spread over 28 MB of text,
/// they had the kernel map about 20 MiB of the binary (it reads 64 KiB around every page a process
/// touches); together, about 10 MiB less (BENCHMARKS.md, "Round five"). Release builds only, on
/// the target whose default linker (rust-lld, since Rust 1.90) takes the list; names the binary
/// lacks are skipped, so a stale list costs nothing but the gain. `ACPD_SYMBOL_ORDER=0` turns it
/// off, as does naming another linker in the flags.
fn symbol_order(manifest: &Path) {
    let list = manifest.join("link/hot-symbols.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=ACPD_SYMBOL_ORDER");
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let wanted = env::var("PROFILE").as_deref() == Ok("release")
        && env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu")
        && env::var("ACPD_SYMBOL_ORDER").as_deref() != Ok("0")
        && !["linker", "link-self-contained", "fuse-ld"]
            .iter()
            .any(|f| flags.contains(f))
        && rustc_minor().is_some_and(|minor| minor >= 90)
        && list.is_file();
    if wanted {
        let list = list.display();
        println!("cargo:rustc-link-arg-bin=acpd=-Wl,--symbol-ordering-file={list}");
        println!("cargo:rustc-link-arg-bin=acpd=-Wl,--no-warn-symbol-ordering");
    }
}

/// What the compiler building this crate prints for `args`.
fn rustc(args: &[&str]) -> Option<String> {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).args(args).output().ok()?;
    String::from_utf8(out.stdout).ok()
}

/// The sysroot of the compiler building this crate.
fn sysroot() -> Option<PathBuf> {
    Some(PathBuf::from(rustc(&["--print", "sysroot"])?.trim()))
}

/// The minor version of the compiler building this crate (`1.<minor>.<patch>`).
fn rustc_minor() -> Option<u32> {
    rustc(&["--version"])?
        .split_whitespace()
        .nth(1)?
        .split('.')
        .nth(1)?
        .parse()
        .ok()
}
