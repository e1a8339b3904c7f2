//! Picks the WIT world from the enabled role features: one role -> that role's world (the
//! component exports only its interfaces); several -> `all-hooks`; none -> `base`.

fn main() {
    let on = |f: &str| std::env::var_os(format!("CARGO_FEATURE_{}", f.to_uppercase())).is_some();
    let roles: Vec<&str> = ["observer", "spans", "logs", "errors"]
        .into_iter()
        .filter(|r| on(r))
        .collect();
    let world = match roles.as_slice() {
        [] => "base",
        ["observer"] => "observer",
        ["spans"] => "span-processor",
        ["logs"] => "log-processor",
        ["errors"] => "error-translator",
        ["spans", "logs"] => "redactor",
        _ => "all-hooks",
    };
    println!(
        "cargo::rustc-check-cfg=cfg(acpd_world, values(\"base\", \"observer\", \"span-processor\", \"log-processor\", \"error-translator\", \"redactor\", \"all-hooks\"))"
    );
    for i in ["observe", "spans", "logs", "errors"] {
        println!("cargo::rustc-check-cfg=cfg(acpd_has_{i})");
    }
    println!("cargo::rustc-cfg=acpd_world=\"{world}\"");
    let all = world == "all-hooks";
    // Only all-hooks exports interfaces of roles that are not enabled.
    for (iface, feature) in [
        ("observe", "observer"),
        ("spans", "spans"),
        ("logs", "logs"),
        ("errors", "errors"),
    ] {
        if all || on(feature) {
            println!("cargo::rustc-cfg=acpd_has_{iface}");
        }
    }
    println!("cargo::rerun-if-changed=../wit");
}
