//! Generated from `wit/` for the world the role features select (see build.rs). Plugin authors
//! use the crate's views and traits, not these types.
#![allow(missing_docs, clippy::all)]

#[cfg(acpd_world = "base")]
wit_bindgen::generate!({
    path: "../wit",
    world: "base",
    pub_export_macro: true,
    default_bindings_module: "acpd_plugin_sdk::bindings",
    export_macro_name: "__acpd_export_world",
});

#[cfg(acpd_world = "observer")]
wit_bindgen::generate!({
    path: "../wit",
    world: "observer",
    pub_export_macro: true,
    default_bindings_module: "acpd_plugin_sdk::bindings",
    export_macro_name: "__acpd_export_world",
});

#[cfg(acpd_world = "span-processor")]
wit_bindgen::generate!({
    path: "../wit",
    world: "span-processor",
    pub_export_macro: true,
    default_bindings_module: "acpd_plugin_sdk::bindings",
    export_macro_name: "__acpd_export_world",
});

#[cfg(acpd_world = "log-processor")]
wit_bindgen::generate!({
    path: "../wit",
    world: "log-processor",
    pub_export_macro: true,
    default_bindings_module: "acpd_plugin_sdk::bindings",
    export_macro_name: "__acpd_export_world",
});

#[cfg(acpd_world = "error-translator")]
wit_bindgen::generate!({
    path: "../wit",
    world: "error-translator",
    pub_export_macro: true,
    default_bindings_module: "acpd_plugin_sdk::bindings",
    export_macro_name: "__acpd_export_world",
});

#[cfg(acpd_world = "redactor")]
wit_bindgen::generate!({
    path: "../wit",
    world: "redactor",
    pub_export_macro: true,
    default_bindings_module: "acpd_plugin_sdk::bindings",
    export_macro_name: "__acpd_export_world",
});

#[cfg(acpd_world = "all-hooks")]
wit_bindgen::generate!({
    path: "../wit",
    world: "all-hooks",
    pub_export_macro: true,
    default_bindings_module: "acpd_plugin_sdk::bindings",
    export_macro_name: "__acpd_export_world",
});
