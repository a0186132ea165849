//! A form body as the browser sends it (`application/x-www-form-urlencoded`),
//! keeping repeated keys: the checkboxes of selected targets all share one
//! name (`target=web01&target=web02`), which serde's flat forms refuse.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};

use super::error::ConsoleError;

/// The fields of a posted form, in order.
#[derive(Debug, Clone, Default)]
pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The first value of `key`, trimmed, `None` when empty.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Every value of `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let body =
            Bytes::from_request(req, state).await.map_err(|e| ConsoleError::BadRequest(format!("reading the form: {e}")))?;
        Ok(Form::parse(&body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_are_all_kept() {
        let f = Form::parse(b"csrf=abc&target=web01&target=web%2002&secs=+30+&empty=");
        assert_eq!(f.get("csrf"), Some("abc"));
        assert_eq!(f.all("target"), vec!["web01", "web 02"]);
        assert_eq!(f.text("secs"), Some("30"));
        assert_eq!(f.text("empty"), None);
        assert_eq!(f.get("missing"), None);
    }
}
