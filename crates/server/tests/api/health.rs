use crate::helpers::{assert_envelope, spawn_app};

#[tokio::test]
async fn healthz_and_readyz_answer_200_when_the_database_is_up() {
    let app = spawn_app().await;

    let health = app.get("/healthz").await;
    let ready = app.get("/readyz").await;

    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(ready.status().as_u16(), 200);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_callers() {
    let app = spawn_app().await;

    let generated = app.get("/healthz").await;
    let echoed = app
        .client
        .get(app.url("/calls/EL_x"))
        .header("X-Request-Id", "req-abc-123")
        .send()
        .await
        .expect("sent");

    let id = generated
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok());
    assert!(id.is_some_and(|v| v.len() == 32), "{id:?}");
    assert_eq!(
        echoed
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("req-abc-123")
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_envelope() {
    let app = spawn_app().await;

    let missing = app.get("/nope").await;
    let method = app.get("/webhooks/elevenlabs/transcription").await;

    assert_envelope(missing, 404).await;
    assert_envelope(method, 405).await;
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_format() {
    let app = spawn_app().await;
    app.get("/healthz").await;

    let response = app.get("/metrics").await;

    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("text");
    assert!(
        text.contains("http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("# TYPE http_request_duration_seconds histogram"));
    assert!(text.contains("db_pool_connections{state=\"max\"}"));
    assert!(text.contains("db_pool_waiters"));
    assert!(text.contains("db_retries_total"));
}
