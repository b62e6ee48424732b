use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest};

use secrecy::ExposeSecret;

use super::{AuthError, bearer, constant_time_eq};
use crate::errors::ApiError;
use crate::state::app_state;

/// Proof that the request carries `Authorization: Bearer <API_TOKEN>`. With no token
/// configured (development mode) every request passes. Headers only: nothing is read.
#[derive(Debug, Clone, Copy)]
pub struct ApiToken;

fn check(req: &HttpRequest) -> Result<ApiToken, ApiError> {
    let state = app_state(req)?;
    let Some(token) = state.settings.api_token.as_ref() else {
        return Ok(ApiToken);
    };
    match bearer(req) {
        Some(provided) if constant_time_eq(provided, token.expose_secret()) => Ok(ApiToken),
        Some(_) => Err(AuthError::InvalidApiToken.into()),
        None => Err(AuthError::MissingApiToken.into()),
    }
}

impl FromRequest for ApiToken {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(check(req))
    }
}
