//! The console's style sheet and script, compiled into the binary: nothing
//! is fetched at install or run time, and there is no front-end build. The
//! script is small and hand-written (confirmations, select-all, live
//! events); the files sit next to this one.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

pub const CSS_PATH: &str = "/assets/console.css";
pub const JS_PATH: &str = "/assets/console.js";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// `GET /assets/{file}`: served to anyone (nothing in them is secret), so
/// the sign-in page is styled.
pub async fn serve(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    ([(header::CONTENT_TYPE, kind), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}
