//! Host-side bindings for `acpd:plugin@0.1.0`, generated from `wit/` (the one contract).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "all-hooks",
    imports: { default: trappable },
    with: {
        "acpd:plugin/host.pattern-set": super::kernels::PatternSet,
    },
});
