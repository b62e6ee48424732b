use std::collections::BTreeSet;

use serde_json::Value;

use crate::helpers::{API_TOKEN, spawn_app};

fn served() -> BTreeSet<(String, String)> {
    calls_server::routes::routes()
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect()
}

#[test]
fn the_document_lists_exactly_the_routes_the_router_serves() {
    let documented: BTreeSet<_> = calls_server::openapi::documented_operations()
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
    let webhook = &doc["paths"]["/webhooks/elevenlabs/transcription"]["post"];
    for status in ["200", "201", "400", "401", "413", "415", "500"] {
        assert!(
            webhook["responses"][status].is_object(),
            "transcription webhook {status}"
        );
    }
    let batch = &doc["paths"]["/driver_data/call-elevenlabs"]["post"];
    for status in ["200", "207", "400", "401", "409", "502"] {
        assert!(batch["responses"][status].is_object(), "batch {status}");
    }
    assert!(doc["components"]["schemas"]["BatchCallRequest"]["example"].is_object());
}

#[tokio::test]
async fn every_documented_operation_is_answered_by_its_route() {
    let app = spawn_app().await;
    for (method, path) in calls_server::openapi::documented_operations() {
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
