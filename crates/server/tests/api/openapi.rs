use std::collections::BTreeSet;

use serde_json::Value;
use utoipa::OpenApi;

use crate::helpers::{API_TOKEN, spawn_app};

fn served() -> BTreeSet<(String, String)> {
    calls_server::routes::routes()
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect()
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_serves() {
    let documented: BTreeSet<_> = calls_server::routes::openapi::documented_operations()
        .into_iter()
        .collect();
    assert_eq!(documented, served());
}

#[test]
fn docs_api_md_describes_every_route() {
    let api_md = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/api.md"))
        .expect("docs/api.md exists");
    for (method, path) in served() {
        assert!(
            api_md.contains(&format!("{method} {path}")),
            "docs/api.md lacks `{method} {path}`"
        );
    }
}

#[tokio::test]
async fn openapi_json_is_served_with_schemas_examples_and_security() {
    let app = spawn_app().await;

    let doc: Value = app.get("/openapi.json").await.json().await.expect("json");

    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for scheme in ["api_token", "webhook_bearer", "elevenlabs_signature"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    for schema in [
        "ErrorBody",
        "TranscriptionRequest",
        "TranscriptionSaved",
        "BatchCallRequest",
        "CallView",
        "TranscriptView",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "{schema}");
    }
    assert!(doc["components"]["schemas"]["BatchCallRequest"]["example"].is_object());
}

/// Every status each route can answer, as the handlers and extractors produce them.
#[test]
fn the_document_lists_every_status_each_route_returns() {
    let doc = serde_json::to_value(calls_server::routes::openapi::ApiDoc::openapi()).expect("json");
    let expected: [(&str, &str, &[&str]); 10] = [
        (
            "post",
            "/webhooks/elevenlabs/transcription",
            &["200", "201", "400", "401", "408", "413", "415", "500"],
        ),
        (
            "post",
            "/webhooks/elevenlabs/post-call",
            &["200", "400", "401", "408", "413", "415", "500"],
        ),
        (
            "post",
            "/driver_data/call-elevenlabs",
            &[
                "200", "207", "400", "401", "408", "409", "413", "415", "500", "502",
            ],
        ),
        ("get", "/calls/{call_sid}", &["200", "401", "404", "500"]),
        (
            "get",
            "/calls/{call_sid}/transcriptions",
            &["200", "401", "404", "500"],
        ),
        ("get", "/healthz", &["200"]),
        ("get", "/readyz", &["200", "503"]),
        ("get", "/metrics", &["200"]),
        ("get", "/openapi.json", &["200"]),
        ("get", "/docs", &["200"]),
    ];
    for (method, path, statuses) in expected {
        let documented: BTreeSet<&str> = doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is documented"))
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            documented,
            statuses.iter().copied().collect(),
            "{method} {path}"
        );
    }
}

#[test]
fn a_call_sid_is_documented_as_one_to_255_characters() {
    let doc = serde_json::to_value(calls_server::routes::openapi::ApiDoc::openapi()).expect("json");
    let body = &doc["components"]["schemas"]["TranscriptionRequest"]["properties"]["call_sid"];
    let path = &doc["paths"]["/calls/{call_sid}"]["get"]["parameters"][0]["schema"];
    for schema in [body, path] {
        assert_eq!(schema["minLength"], 1, "{schema}");
        assert_eq!(schema["maxLength"], 255, "{schema}");
    }
}

#[tokio::test]
async fn every_documented_operation_is_answered_by_its_route() {
    let app = spawn_app().await;
    for (method, path) in calls_server::routes::openapi::documented_operations() {
        let url = app.url(&path.replace("{call_sid}", "EL_doc_1"));
        let request = match method.as_str() {
            "GET" => app.client.get(url),
            "POST" => app
                .client
                .post(url)
                .header("Content-Type", "application/json")
                .body("{}"),
            other => panic!("unexpected method {other}"),
        };
        let response = request.bearer_auth(API_TOKEN).send().await.expect("sent");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{method} {path}");
        assert!(
            !text.contains("No route for"),
            "{method} {path} is not routed: {text}"
        );
    }
}

#[tokio::test]
async fn the_docs_page_works_without_internet() {
    let app = spawn_app().await;

    let response = app.get("/docs").await;

    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"))
    );
    let html = response.text().await.expect("text");
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external resources"
    );
}
