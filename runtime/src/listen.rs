//! What a listening address flag means (`muster-master --http ADDR`,
//! `muster-target --metrics ADDR`), written once so the two daemons read
//! it alike. In order of what is tried:
//!
//! - a port alone (`8080`): loopback only, `127.0.0.1:8080`, the default
//!   stance (what is served there is for this host unless said otherwise);
//! - `IP:PORT`: exactly there; `0.0.0.0:8080` or `[::]:8080` to listen on
//!   every interface (in a container, published on the host's loopback by
//!   compose);
//! - `NAME:PORT`: the first address `NAME` resolves to (`localhost:8080`).

use std::net::{SocketAddr, ToSocketAddrs as _};

/// Why an address flag does not name an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{addr}: {why}")]
pub struct AddrError {
    pub addr: String,
    pub why: String,
}

/// What `ADDR` means (see the module's documentation).
///
/// # Errors
/// [`AddrError`], saying why.
pub fn parse_addr(addr: &str) -> Result<SocketAddr, AddrError> {
    let bad = |why: String| AddrError { addr: addr.to_owned(), why };
    if !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit()) {
        let port: u16 = addr.parse().map_err(|_| bad("not a port (0 to 65535)".into()))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    addr.to_socket_addrs()
        .map_err(|e| bad(format!("expected PORT, IP:PORT or HOST:PORT ({e})")))?
        .next()
        .ok_or_else(|| bad("the name resolves to no address".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_alone_is_loopback_and_an_address_is_taken_as_given() {
        assert_eq!(parse_addr("8080").unwrap(), "127.0.0.1:8080".parse().unwrap());
        assert_eq!(parse_addr("0.0.0.0:9000").unwrap(), "0.0.0.0:9000".parse().unwrap());
        assert_eq!(parse_addr("[::1]:9000").unwrap(), "[::1]:9000".parse().unwrap());
        assert!(parse_addr("localhost:9000").unwrap().ip().is_loopback());
        for bad in ["", "99999", "web:", "no port"] {
            assert!(parse_addr(bad).is_err(), "{bad:?}");
        }
    }
}
