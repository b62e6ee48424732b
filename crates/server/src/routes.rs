//! The route table. Request and response types live with their handler (`routes/*.rs`);
//! authentication and bodies are extractors (`auth.rs`, `body.rs`).

use actix_web::{HttpRequest, HttpResponse, web};

use crate::errors::ApiError;

pub mod batch_calls;
pub mod calls;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod post_call_webhook;
pub mod transcription_webhook;

/// One route of the service. The router and the OpenAPI test both read [`routes`], so the
/// served routes and the documented ones cannot drift apart.
pub struct RouteSpec {
    pub method: &'static str,
    pub path: &'static str,
    make: fn() -> actix_web::Route,
}

pub fn routes() -> Vec<RouteSpec> {
    vec![
        RouteSpec {
            method: "POST",
            path: "/webhooks/elevenlabs/transcription",
            make: || web::post().to(transcription_webhook::receive),
        },
        RouteSpec {
            method: "POST",
            path: "/webhooks/elevenlabs/post-call",
            make: || web::post().to(post_call_webhook::receive),
        },
        RouteSpec {
            method: "POST",
            path: "/driver_data/call-elevenlabs",
            make: || web::post().to(batch_calls::place),
        },
        RouteSpec {
            method: "GET",
            path: "/calls",
            make: || web::get().to(calls::list_calls),
        },
        RouteSpec {
            method: "GET",
            path: "/calls/{call_sid}",
            make: || web::get().to(calls::get_call),
        },
        RouteSpec {
            method: "GET",
            path: "/calls/{call_sid}/transcriptions",
            make: || web::get().to(calls::get_transcriptions),
        },
        RouteSpec {
            method: "GET",
            path: "/healthz",
            make: || web::get().to(health::healthz),
        },
        RouteSpec {
            method: "GET",
            path: "/readyz",
            make: || web::get().to(health::readyz),
        },
        RouteSpec {
            method: "GET",
            path: "/metrics",
            make: || web::get().to(metrics::metrics),
        },
        RouteSpec {
            method: "GET",
            path: "/openapi.json",
            make: || web::get().to(openapi::openapi_json),
        },
        RouteSpec {
            method: "GET",
            path: "/docs",
            make: || web::get().to(openapi::docs_page),
        },
    ]
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    let all = routes();
    // One resource per path (in table order), so a 405 can name every method it serves.
    let mut paths: Vec<&'static str> = Vec::new();
    for route in &all {
        if !paths.contains(&route.path) {
            paths.push(route.path);
        }
    }
    for path in paths {
        let here: Vec<&RouteSpec> = all.iter().filter(|r| r.path == path).collect();
        let allow = here.iter().map(|r| r.method).collect::<Vec<_>>().join(", ");
        let mut resource = web::resource(path);
        for route in here {
            resource = resource.route((route.make)());
        }
        cfg.service(resource.default_service(web::to(move |req: HttpRequest| {
            let allow = allow.clone();
            async move {
                Err::<HttpResponse, _>(ApiError::method_not_allowed(
                    req.method().as_str(),
                    req.path(),
                    &allow,
                ))
            }
        })));
    }
}

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::not_found(
        "Not found",
        format!("No route for {} {}", req.method(), req.path()),
    ))
}
