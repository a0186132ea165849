//! Who is signed in, and what they may do.
//!
//! - Users come from the file `musterctl auth console-user` writes
//!   (`--http-users`): names, roles, Argon2id hashes. It is refused when
//!   others can read it, like every private key file.
//! - Signing in checks the password off the async workers, two at a time
//!   (Argon2 is slow on purpose), and a name that does not exist costs the
//!   same as a wrong password. Passwords are never logged; names are.
//! - A session is a random 256-bit id in an HTTP-only, `SameSite=Strict`
//!   cookie (`Secure`, and named `__Host-…`, over TLS), kept in memory
//!   with its role and CSRF token; at most [`MAX_SESSIONS`] (the oldest
//!   goes first), each for [`SESSION_TTL`]. Sessions are per master
//!   replica: behind a load balancer, pin clients to one.
//! - Every POST carries the session's CSRF token in a hidden field; the
//!   sign-in form its own, bound to a short-lived cookie. Tokens are
//!   compared in constant time.
//! - An action is allowed when the role may call its API operation
//!   ([`Role::may`] on [`Op::access`]): the same rule as the NATS API's.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
use argon2::Argon2;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use cookie::{Cookie, SameSite};
use maud::html;
use muster_runtime::nats::{check_private, KeyKind};
use muster_shared::api::Op;
use muster_shared::console::{self as shared, ConsoleUser, Role, UsersFile};
use rand::distr::{Alphanumeric, SampleString as _};
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

use super::error::{ConsoleError, OpenError};
use super::form::Form;
use super::layout;
use super::AppState;

/// Sessions kept at once; past it the oldest is signed out.
pub const MAX_SESSIONS: usize = 1024;
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a sign-in form may wait before it is sent.
const LOGIN_FORM_TTL: Duration = Duration::from_secs(600);
/// Password checks run at once (each holds a core for a while).
const CHECKS_AT_ONCE: usize = 2;

const SESSION_COOKIE: &str = "muster_session";
const SECURE_SESSION_COOKIE: &str = "__Host-muster_session";
const LOGIN_COOKIE: &str = "muster_login";

/// The users allowed to sign in.
#[derive(Debug, Clone)]
pub struct Users {
    by_name: Arc<HashMap<String, ConsoleUser>>,
    checks: Arc<Semaphore>,
}

impl Users {
    /// Reads the users file, refusing one that others can read.
    ///
    /// # Errors
    /// [`OpenError::KeyFile`] or [`OpenError::Users`].
    pub fn load(path: &Path) -> Result<Users, OpenError> {
        let bad = |why: String| OpenError::Users { path: path.to_owned(), why };
        check_private(KeyKind::ConsoleUsers, path)?;
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let file: UsersFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if file.v != muster_shared::PROTOCOL_VERSION {
            return Err(bad(format!("version {} (this master reads {})", file.v, muster_shared::PROTOCOL_VERSION)));
        }
        let mut by_name = HashMap::new();
        for u in file.users {
            shared::check_user_name(&u.name).map_err(|e| bad(e.to_string()))?;
            PasswordHash::new(&u.password_hash).map_err(|e| bad(format!("user {}: unreadable password hash ({e})", u.name)))?;
            by_name.insert(u.name.clone(), u);
        }
        if by_name.is_empty() {
            return Err(bad("no users: add one with `musterctl auth console-user NAME --role admin --dir DIR`".into()));
        }
        Ok(Users { by_name: Arc::new(by_name), checks: Arc::new(Semaphore::new(CHECKS_AT_ONCE)) })
    }

    /// The role of `name` when `password` is theirs. Unknown names cost a
    /// check too (against another user's hash), so timing does not tell
    /// which names exist.
    async fn check(&self, name: &str, password: String) -> Option<Role> {
        let (user, known) = match self.by_name.get(name) {
            Some(u) => (u.clone(), true),
            None => (self.by_name.values().next()?.clone(), false),
        };
        let _permit = self.checks.acquire().await.ok()?;
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&user.password_hash)
                .is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        (verified && known).then_some(user.role)
    }
}

#[derive(Debug, Clone)]
struct Session {
    user: String,
    role: Role,
    csrf: String,
    created: Instant,
}

/// Sessions of people signed in to this master.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn create(&self, user: &str, role: Role) -> String {
        let id = token();
        let now = Instant::now();
        let mut map = self.by_id.lock().expect("sessions");
        map.retain(|_, s| now.duration_since(s.created) < SESSION_TTL);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            map.remove(&oldest);
        }
        map.insert(id.clone(), Session { user: user.to_owned(), role, csrf: token(), created: now });
        id
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.by_id.lock().expect("sessions");
        map.get(id).filter(|s| s.created.elapsed() < SESSION_TTL).cloned()
    }

    fn remove(&self, id: &str) {
        self.by_id.lock().expect("sessions").remove(id);
    }
}

/// 43 letters and digits: about 256 bits from the thread's CSPRNG.
fn token() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 43)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Someone signed in, as every page and action sees them.
#[derive(Debug, Clone)]
pub struct Signed {
    pub user: String,
    pub role: Role,
    /// This session's CSRF token, for the forms on the page.
    pub csrf: String,
    session: String,
}

impl Signed {
    /// Whether the role may do what `op` does; pages show buttons only then.
    pub fn may(&self, op: Op) -> bool {
        self.role.may(op.access())
    }

    /// Checks a posted form for `op`: its CSRF token, then the role. Both
    /// refusals are 403 and logged with the user and operation.
    ///
    /// # Errors
    /// [`ConsoleError::Forbidden`].
    pub fn authorize(&self, op: Op, form: &Form) -> Result<(), ConsoleError> {
        if !form.get("csrf").is_some_and(|t| same(t, &self.csrf)) {
            tracing::warn!(user = %self.user, op = op.subject(), "console action refused: missing or wrong CSRF token");
            return Err(ConsoleError::Forbidden(
                "the form's CSRF token is missing or wrong; reload the page and try again".into(),
            ));
        }
        if !self.may(op) {
            tracing::warn!(user = %self.user, role = self.role.as_str(), op = op.subject(), "console action refused: role");
            return Err(ConsoleError::Forbidden(format!("the {} role may not {}", self.role.as_str(), op.subject())));
        }
        tracing::info!(user = %self.user, op = op.subject(), "console action");
        Ok(())
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let id = cookie_value(&parts.headers, session_cookie(state.secure));
        let signed =
            id.and_then(|id| state.sessions.get(&id).map(|s| Signed { user: s.user, role: s.role, csrf: s.csrf, session: id }));
        signed.ok_or_else(|| Redirect::to("/login").into_response())
    }
}

fn session_cookie(secure: bool) -> &'static str {
    if secure {
        SECURE_SESSION_COOKIE
    } else {
        SESSION_COOKIE
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}

fn set_cookie(name: &'static str, value: String, path: &'static str, max_age: Duration, secure: bool) -> String {
    Cookie::build((name, value))
        .path(path)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX)))
        .build()
        .to_string()
}

/// `GET /login`: the sign-in form, with a CSRF token bound to a cookie.
pub async fn login_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if cookie_value(&headers, session_cookie(state.secure)).is_some_and(|id| state.sessions.get(&id).is_some()) {
        return Redirect::to("/").into_response();
    }
    login_form(&state, StatusCode::OK, None)
}

fn login_form(state: &AppState, status: StatusCode, error: Option<&str>) -> Response {
    let csrf = token();
    let page = layout::bare(
        "Sign in",
        html! {
            h1 { "Muster: sign in" }
            @if let Some(e) = error { p.error id="login-error" { (e) } }
            form.login method="post" action="/login" {
                input type="hidden" name="csrf" value=(csrf);
                label { "User " input type="text" name="user" id="user" autocomplete="username" required autofocus; }
                label { "Password " input type="password" name="password" id="password" autocomplete="current-password" required; }
                button type="submit" id="sign-in" { "Sign in" }
            }
        },
    );
    let cookie = set_cookie(LOGIN_COOKIE, csrf, "/login", LOGIN_FORM_TTL, state.secure);
    (status, [(header::SET_COOKIE, cookie)], Html(page.into_string())).into_response()
}

/// `POST /login`: checks the form's token and the password, then opens a
/// session.
pub async fn login(State(state): State<AppState>, headers: HeaderMap, form: Form) -> Response {
    let bound = cookie_value(&headers, LOGIN_COOKIE);
    let token_ok = matches!((bound.as_deref(), form.get("csrf")), (Some(a), Some(b)) if same(a, b));
    if !token_ok {
        tracing::warn!("console sign-in refused: missing or wrong CSRF token");
        return login_form(&state, StatusCode::FORBIDDEN, Some("The sign-in form expired; try again."));
    }
    let user = form.get("user").unwrap_or_default().to_owned();
    let password = form.get("password").unwrap_or_default().to_owned();
    let Some(role) = state.users.check(&user, password).await else {
        tracing::warn!(user = %user.escape_debug(), "console sign-in refused: wrong user name or password");
        return login_form(&state, StatusCode::UNAUTHORIZED, Some("Wrong user name or password."));
    };
    let id = state.sessions.create(&user, role);
    tracing::info!(user = %user, role = role.as_str(), "console sign-in");
    let mut response = Redirect::to("/").into_response();
    let headers = response.headers_mut();
    for c in [
        set_cookie(session_cookie(state.secure), id, "/", SESSION_TTL, state.secure),
        set_cookie(LOGIN_COOKIE, String::new(), "/login", Duration::ZERO, state.secure),
    ] {
        headers.append(header::SET_COOKIE, c.parse().expect("a cookie is a valid header value"));
    }
    response
}

/// `POST /logout`: ends the session (CSRF-checked, like every POST).
pub async fn logout(State(state): State<AppState>, signed: Signed, form: Form) -> Response {
    if !form.get("csrf").is_some_and(|t| same(t, &signed.csrf)) {
        return ConsoleError::Forbidden("the form's CSRF token is missing or wrong".into()).into_response();
    }
    state.sessions.remove(&signed.session);
    tracing::info!(user = %signed.user, "console sign-out");
    let cookie = set_cookie(session_cookie(state.secure), String::new(), "/", Duration::ZERO, state.secure);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_are_bounded_and_have_their_own_tokens() {
        let sessions = Sessions::default();
        let a = sessions.create("alice", Role::Admin);
        let b = sessions.create("bob", Role::Viewer);
        let (sa, sb) = (sessions.get(&a).unwrap(), sessions.get(&b).unwrap());
        assert_ne!(a, b);
        assert_ne!(sa.csrf, sb.csrf);
        assert_eq!((sa.user.as_str(), sa.role), ("alice", Role::Admin));
        sessions.remove(&a);
        assert!(sessions.get(&a).is_none());
        for i in 0..MAX_SESSIONS + 10 {
            sessions.create(&format!("u{i}"), Role::Viewer);
        }
        assert_eq!(sessions.by_id.lock().unwrap().len(), MAX_SESSIONS);
        assert!(sessions.get(&b).is_none(), "the oldest went first");
    }

    #[test]
    fn a_users_file_is_read_only_when_private_and_sound() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        let write = |text: &str, mode: u32| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        // A real hash of "correct horse battery", made the way musterctl makes them.
        let hash = {
            use argon2::password_hash::{PasswordHasher as _, SaltString};
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            Argon2::default().hash_password(b"correct horse battery", &salt).unwrap().to_string()
        };
        let good = format!(r#"{{"v":1,"users":[{{"name":"alice","role":"admin","password_hash":"{hash}"}}]}}"#);
        write(&good, 0o644);
        assert!(matches!(Users::load(&path), Err(OpenError::KeyFile(_))), "readable by others");
        for (bad, why) in [
            (r#"{"v":1,"users":[]}"#, "no users"),
            (r#"{"v":2,"users":[]}"#, "version 2"),
            (r#"{"v":1,"users":[{"name":"alice","role":"admin","password_hash":"plain"}]}"#, "unreadable password hash"),
            (r#"{"v":1,"users":[{"name":"a b","role":"admin","password_hash":"x"}]}"#, "must be 1 to 64"),
            ("not json", "expected"),
        ] {
            write(bad, 0o600);
            let e = Users::load(&path).unwrap_err();
            assert!(matches!(e, OpenError::Users { .. }) && e.to_string().contains(why), "{bad}: {e}");
        }
        write(&good, 0o600);
        let users = Users::load(&path).unwrap();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
            assert_eq!(users.check("alice", "correct horse battery".into()).await, Some(Role::Admin));
            assert_eq!(users.check("alice", "wrong".into()).await, None);
            assert_eq!(users.check("mallory", "correct horse battery".into()).await, None, "an unknown name");
        });
    }

    #[test]
    fn a_form_needs_the_sessions_token_and_a_role_that_may() {
        let viewer = Signed { user: "v".into(), role: Role::Viewer, csrf: "t0k3n".into(), session: "s".into() };
        let good = Form::parse(b"csrf=t0k3n");
        assert!(viewer.authorize(Op::TargetList, &good).is_ok());
        assert!(matches!(viewer.authorize(Op::TargetForcePollMany, &good), Err(ConsoleError::Forbidden(_))));
        let admin = Signed { role: Role::Admin, ..viewer };
        assert!(admin.authorize(Op::TargetForcePollMany, &good).is_ok());
        for bad in [&b"csrf=t0k3m"[..], b"csrf=", b""] {
            assert!(matches!(admin.authorize(Op::TargetForcePollMany, &Form::parse(bad)), Err(ConsoleError::Forbidden(_))));
        }
    }
}
