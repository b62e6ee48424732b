//! Names the OpenAPI annotations of the routes share. The document itself is built in
//! `routes::openapi` (it lists the routes, so it lives below them).

/// The error envelope, documented as `ErrorBody`; the type is the one that renders it.
pub use crate::errors::ErrorEnvelope as ErrorBody;
