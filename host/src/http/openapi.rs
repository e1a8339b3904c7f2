//! The OpenAPI 3.1 document. Paths come from the `#[utoipa::path]` attributes of the very
//! handlers the router mounts (`super::api`), so a route cannot exist without its entry; what
//! the guards add to every route (auth, Host/CORS, draining, body limit) is added here once.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use std::sync::LazyLock;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response as ApiResponse, ResponseBuilder};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "acpd",
        description = "Serves ACP coding agents over HTTP+SSE (wire-compatible with the core of `qwen serve`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "sessions", description = "Create, attach, load, inspect and close agent sessions"),
        (name = "prompts", description = "Non-blocking prompts, cancel, permission votes, the queue"),
        (name = "events", description = "The per-session SSE event stream with replay"),
        (name = "daemon", description = "Health and capabilities"),
        (name = "telemetry", description = "Prometheus metrics and the embedded trace view"),
        (name = "plugins", description = "WASM plugin administration"),
        (name = "console", description = "The web console's page and files"),
        (name = "workspace", description = "Read-only workspace files, confined to the primary workspace and .gitignore-aware"),
    ),
)]
pub struct ApiDoc;

/// What the guards add to every route, applied to the finished document: the routes are only
/// known once the router is built.
pub(super) fn add_guards(api: &mut utoipa::openapi::OpenApi) {
    let components = api.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "Required when the daemon has a token (always on a non-loopback bind)",
                ))
                .build(),
        ),
    );
    for (name, text) in [
        (
            "Unauthorized",
            "`unauthorized`: a token is configured and the request lacks it",
        ),
        (
            "Forbidden",
            "`invalid_host` (DNS-rebinding defence on loopback binds) or `cors_denied`",
        ),
        (
            "Draining",
            "`daemon_draining`: the daemon is shutting down (with `Retry-After`)",
        ),
        (
            "TooLarge",
            "`payload_too_large`: the body exceeds `server.max_body_bytes`",
        ),
        (
            "BadRequest",
            "`invalid_json`, `invalid_request`: a malformed body, path or query",
        ),
    ] {
        components
            .responses
            .insert(name.to_string(), error_response(text));
    }
    for (path, item) in api.paths.paths.iter_mut() {
        let public = super::guard::PUBLIC
            .iter()
            .chain(super::guard::PUBLIC_UNLESS_REQUIRED)
            .any(|p| p == path);
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            guard(op, public);
        }
    }
}

/// OpenAPI links from a created session to the operations on it, so schema-driven clients and
/// fuzzers can follow `sessionId`/`clientId` from `POST /session`. Left out: the event stream
/// (on a live session it never ends by itself) and the model switch, whose 404 for an unknown
/// model (the contract's `model_not_found`) a linked client would read as the session gone.
/// Written into the JSON because utoipa 5.5 serialises `Link.operationId` as `operation_id`.
fn link_sessions(doc: &mut serde_json::Value) {
    let mut links = serde_json::Map::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        if !path.starts_with("/session/{id}")
            || path.ends_with("/events")
            || path.ends_with("/model")
        {
            continue;
        }
        for op in item.as_object().into_iter().flat_map(|m| m.values()) {
            let Some(id) = op["operationId"].as_str() else {
                continue;
            };
            let mut parameters = serde_json::json!({"path.id": "$response.body#/sessionId"});
            let takes_client = op["parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "X-Qwen-Client-Id"));
            if takes_client {
                parameters["header.X-Qwen-Client-Id"] = "$response.body#/clientId".into();
            }
            links.insert(
                id.to_string(),
                serde_json::json!({"operationId": id, "parameters": parameters}),
            );
        }
    }
    if let Some(created) = doc.pointer_mut("/paths/~1session/post/responses/200") {
        created["links"] = links.into();
    }
}

/// Operations whose body may be empty (read as `{}`).
const OPTIONAL_BODY: &[&str] = &["create_session", "load_session", "cancel", "resume"];

fn guard(op: &mut Operation, public: bool) {
    let has_body = op.request_body.is_some();
    if let (Some(body), Some(id)) = (op.request_body.as_mut(), op.operation_id.as_deref())
        && OPTIONAL_BODY.contains(&id)
    {
        body.required = Some(utoipa::openapi::Required::False);
    }
    let has_input = has_body || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    if op.security.is_none() {
        // `{}` first: on a loopback bind without a token, no auth is needed.
        let mut either = vec![SecurityRequirement::default()];
        if !public {
            either.push(SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        op.security = Some(either);
    }
    let responses = &mut op.responses.responses;
    let mut add = |status: &str, name: &str| {
        responses
            .entry(status.to_string())
            .or_insert_with(|| RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))));
    };
    add("401", "Unauthorized");
    add("403", "Forbidden");
    add("503", "Draining");
    if has_body {
        add("413", "TooLarge");
    }
    if has_input {
        add("400", "BadRequest");
    }
}

fn error_response(description: &str) -> RefOr<ApiResponse> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let doc = serde_json::to_value(super::api().1).map(|mut doc| {
        link_sessions(&mut doc);
        with_acp_schemas(doc)
    });
    doc.and_then(|d| serde_json::to_string_pretty(&d))
        .unwrap_or_else(|e| format!("{{\"error\":\"OpenAPI document failed: {e}\"}}"))
});

/// `prompt` items: the ACP crate's own `ContentBlock` schema, added by `with_acp_schemas`.
pub fn content_blocks() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(Ref::from_schema_name("ContentBlock"))
        .min_items(Some(1))
        .build()
}

/// `ContentBlock` and what it references, as the ACP schema crate derives them (schemars), so
/// the document describes exactly what the daemon's parser accepts.
fn acp_definitions() -> Map {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas/".into();
    let mut generator = settings.into_generator();
    let root = generator.subschema_for::<agent_client_protocol::v1::schema::ContentBlock>();
    let mut defs = generator.take_definitions(true);
    if !defs.contains_key("ContentBlock") {
        defs.insert("ContentBlock".into(), root.to_value());
    }
    for schema in defs.values_mut() {
        bottom_up(schema, &mut |node| {
            split_ref_siblings(node);
            accept_what_is_defaulted(node);
        });
    }
    defs
}

/// Calls `f` on every object in `v`, children first.
fn bottom_up(v: &mut serde_json::Value, f: &mut impl FnMut(&mut Map)) {
    match v {
        serde_json::Value::Object(map) => {
            map.values_mut().for_each(|c| bottom_up(c, f));
            f(map);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|c| bottom_up(c, f)),
        _ => {}
    }
}

type Map = serde_json::Map<String, serde_json::Value>;

/// Replaces `map` by `{key: alternatives(rest)}`, its description kept beside.
fn wrap(map: &mut Map, key: &str, alternatives: impl FnOnce(Map) -> serde_json::Value) {
    let description = map.remove("description");
    let rest = std::mem::take(map);
    map.insert(key.into(), alternatives(rest));
    if let Some(d) = description {
        map.insert("description".into(), d);
    }
}

/// `{"$ref": X, ...more}` becomes `{"allOf": [{"$ref": X}, {...more}]}`: the same in JSON
/// Schema 2020-12, but tools that still read `$ref` as "replace this object" (OpenAPI 3.0's
/// rule) would otherwise drop the tag constraints of every `ContentBlock` variant.
fn split_ref_siblings(map: &mut Map) {
    if map.contains_key("$ref") && map.keys().any(|k| k != "$ref" && k != "description") {
        let reference = map.remove("$ref").expect("checked");
        wrap(
            map,
            "allOf",
            |rest| serde_json::json!([{"$ref": reference}, rest]),
        );
    }
}

/// The ACP crate reads some fields leniently (`x-deserialize-default-on-error`: an invalid value
/// becomes the default, as `annotations` on a content block): the document says so, and that
/// any value is accepted there, keeping the intended shape as the first alternative.
fn accept_what_is_defaulted(map: &mut Map) {
    if map.get("x-deserialize-default-on-error") == Some(&serde_json::Value::Bool(true)) {
        wrap(
            map,
            "anyOf",
            |shape| serde_json::json!([shape, {"description": "Any other value is read as absent"}]),
        );
    }
}

fn with_acp_schemas(mut doc: serde_json::Value) -> serde_json::Value {
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (name, schema) in acp_definitions() {
            // The daemon's own names win; a test checks that none collide.
            schemas.entry(name).or_insert(schema);
        }
    }
    doc
}

/// The document (JSON), as served.
pub fn document() -> &'static str {
    &DOCUMENT
}

#[utoipa::path(get, path = "/openapi.json", tag = "daemon",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
pub async fn serve() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], document()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acp_schemas_resolve_and_do_not_collide_with_the_daemons() {
        let own = super::super::api().1.components.unwrap().schemas;
        let acp = acp_definitions();
        for name in acp.keys() {
            assert!(!own.contains_key(name), "{name} is both ours and ACP's");
        }
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let items = &doc["components"]["schemas"]["PromptBody"]["properties"]["prompt"]["items"];
        assert_eq!(items["$ref"], "#/components/schemas/ContentBlock");
        // Every reference in the document names a schema it defines.
        let text = document();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = &part[..part.find('"').unwrap()];
            assert!(doc["components"]["schemas"][name].is_object(), "{name}");
        }
        let text_block =
            serde_json::to_string(&doc["components"]["schemas"]["ContentBlock"]).unwrap();
        assert!(text_block.contains("resource_link"), "{text_block}");
    }

    #[test]
    fn created_sessions_link_to_their_operations_and_optional_bodies_are_marked() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let mut ops = std::collections::HashMap::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                ops.insert(op["operationId"].as_str().unwrap().to_string(), op.clone());
            }
        }
        let links = doc
            .pointer("/paths/~1session/post/responses/200/links")
            .and_then(serde_json::Value::as_object)
            .unwrap();
        assert!(links.len() >= 8, "{links:?}");
        for (name, link) in links {
            assert!(
                ops.contains_key(link["operationId"].as_str().unwrap()),
                "{name}"
            );
        }
        assert_eq!(
            links["prompt"]["parameters"]["header.X-Qwen-Client-Id"],
            "$response.body#/clientId"
        );
        assert!(!links.contains_key("events"), "a live stream never ends");
        for id in OPTIONAL_BODY {
            assert_eq!(ops[*id]["requestBody"]["required"], false, "{id}");
        }
        assert_eq!(ops["prompt"]["requestBody"]["required"], true);
    }
}
