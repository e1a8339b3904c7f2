//! The web console (`GET /`) and the trace view's page (`GET /debug/traces`): plain HTML, CSS
//! and JavaScript modules in `host/assets/`, embedded in the binary at build time (no Node step,
//! nothing fetched from elsewhere at run time). Their scripts use only the HTTP API, with the
//! same guards as any other client; the pages are served under a strict Content-Security-Policy
//! (no inline script or style, no eval, nothing but this origin).

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../assets/", $name)),
        }
    };
}

/// Every embedded file. The pages (`.html`) are served at their routes only; the rest at
/// `/console/{name}`.
pub const ASSETS: &[Asset] = &[
    asset!("console.html", "text/html; charset=utf-8"),
    asset!("traces.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("markdown.js", "text/javascript; charset=utf-8"),
    asset!("diff.js", "text/javascript; charset=utf-8"),
    asset!("console.js", "text/javascript; charset=utf-8"),
    asset!("traces.js", "text/javascript; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

/// The policy of every console and trace-view response: scripts, styles, images and requests
/// from this origin only; no inline script or style attribute, no eval, no framing, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

fn named(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// A file served at `/console/{name}` (never a page: those have their own routes).
pub fn asset(name: &str) -> Option<&'static Asset> {
    named(name).filter(|a| !a.name.ends_with(".html"))
}

/// A page, by file name (`console.html`, `traces.html`).
pub fn page(name: &str) -> &'static str {
    named(name)
        .and_then(|a| std::str::from_utf8(a.body).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(a: &Asset) -> &'static str {
        std::str::from_utf8(a.body).unwrap()
    }

    #[test]
    fn every_asset_is_embedded_and_self_contained() {
        for a in ASSETS {
            let t = text(a);
            assert!(!t.is_empty(), "{}", a.name);
            // Nothing from another origin: no CDN, no web fonts, no imports from elsewhere.
            for external in [
                "//cdn",
                "@import",
                "url(http",
                "fonts.googleapis",
                "src=\"http",
            ] {
                assert!(!t.contains(external), "{} references {external}", a.name);
            }
            // The output of an agent is never parsed as HTML.
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
            ] {
                assert!(!t.contains(sink), "{} uses {sink}", a.name);
            }
        }
    }

    #[test]
    fn pages_load_only_their_own_files_and_no_inline_script_or_style() {
        for page_name in ["console.html", "traces.html"] {
            let p = page(page_name);
            assert!(p.starts_with("<!doctype html>"), "{page_name}");
            assert!(!p.contains("<style"), "{page_name}: inline style");
            assert!(
                !p.contains(" style="),
                "{page_name}: inline style attribute"
            );
            for part in p.split(" on").skip(1) {
                let name: String = part.chars().take_while(char::is_ascii_alphabetic).collect();
                let after = part[name.len()..].trim_start();
                assert!(
                    name.is_empty() || !after.starts_with('='),
                    "{page_name}: on{name}="
                );
            }
            for part in p.split("<script").skip(1) {
                let tag = &part[..part.find('>').unwrap()];
                let src = tag.split("src=\"").nth(1).expect("script without src");
                let file = src[..src.find('"').unwrap()]
                    .strip_prefix("/console/")
                    .unwrap();
                assert!(asset(file).is_some(), "{page_name} loads {file}");
                assert!(part[part.find('>').unwrap() + 1..].starts_with("</script>"));
            }
            for part in p.split("href=\"").skip(1) {
                let href = &part[..part.find('"').unwrap()];
                if let Some(file) = href.strip_prefix("/console/") {
                    assert!(asset(file).is_some(), "{page_name} links {file}");
                }
            }
            assert!(
                p.contains("/console/style.css"),
                "{page_name} shares the styles"
            );
        }
        assert!(asset("console.html").is_none());
        assert!(asset("../Cargo.toml").is_none());
    }

    #[test]
    fn the_trace_view_reads_its_json_with_the_token_as_a_header() {
        let js = text(asset("traces.js").unwrap());
        for needle in ["'.json'", "location.hash", "?traceId=", "authHeaders"] {
            assert!(js.contains(needle), "traces.js lacks {needle}");
        }
        let api = text(asset("api.js").unwrap());
        assert!(api.contains("'Bearer '") && api.contains("sessionStorage"));
    }
}
