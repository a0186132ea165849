//! A loopback TCP proxy between one process and nats-server, so a test can
//! isolate that process from NATS while everything else stays connected.
//!
//! It speaks just enough of the NATS client protocol (client → server) to
//! drop whole `PUB`/`HPUB` commands by subject prefix, which is how a test
//! loses a target's acks at will ([`Proxy::drop_publishes_to`]) without any
//! hook in the product. Modes:
//!
//! - [`Proxy::restore`]: everything passes;
//! - [`Proxy::cut`]: every connection is closed and new ones are refused
//!   (the network is gone);
//! - [`Proxy::deafen`]: the client's bytes reach the server, the server's
//!   answers are thrown away (messages stored, acks lost);
//! - [`Proxy::drop_publishes_to`]: publishes to subjects with a prefix vanish.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    Pass,
    Cut,
    Deaf,
    DropPublishes(String),
}

#[derive(Debug)]
struct Shared {
    upstream: u16,
    mode: Mutex<Mode>,
    /// Both sockets of every live connection, to close them on a cut.
    conns: Mutex<Vec<TcpStream>>,
    dropped: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn mode(&self) -> Mode {
        self.mode.lock().expect("proxy lock").clone()
    }

    fn close_all(&self) {
        for s in self.conns.lock().expect("proxy lock").drain(..) {
            s.shutdown(Shutdown::Both).ok();
        }
    }
}

/// See the module documentation. Stops on drop.
#[derive(Debug)]
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream_port`.
    ///
    /// # Panics
    /// When it cannot listen.
    pub fn start(upstream_port: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy listen");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared {
            upstream: upstream_port,
            mode: Mutex::new(Mode::Pass),
            conns: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if s.mode() == Mode::Cut {
                    continue; // dropped: closed at once
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", s.upstream)) else { continue };
                {
                    let mut conns = s.conns.lock().expect("proxy lock");
                    conns.push(client.try_clone().expect("clone"));
                    conns.push(server.try_clone().expect("clone"));
                }
                let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                let up = s.clone();
                std::thread::spawn(move || client_to_server(client, server, &up));
                let down = s.clone();
                std::thread::spawn(move || server_to_client(s2, c2, &down));
            }
        });
        Proxy { port, shared }
    }

    /// The URL a process behind this proxy connects to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Closes every connection and refuses new ones.
    pub fn cut(&self) {
        *self.shared.mode.lock().expect("proxy lock") = Mode::Cut;
        self.shared.close_all();
    }

    /// Lets the client's bytes through but throws the server's away.
    pub fn deafen(&self) {
        *self.shared.mode.lock().expect("proxy lock") = Mode::Deaf;
    }

    /// Drops every publish whose subject starts with `prefix`.
    pub fn drop_publishes_to(&self, prefix: &str) {
        *self.shared.mode.lock().expect("proxy lock") = Mode::DropPublishes(prefix.to_owned());
    }

    /// Publishes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::SeqCst)
    }

    /// Back to passing everything. After a cut or deafness the old
    /// connections are closed, so clients reconnect on a clean stream.
    pub fn restore(&self) {
        let mut mode = self.shared.mode.lock().expect("proxy lock");
        let broken = matches!(*mode, Mode::Cut | Mode::Deaf);
        *mode = Mode::Pass;
        drop(mode);
        if broken {
            self.shared.close_all();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
        // Wake the accept loop so it sees `stop`.
        TcpStream::connect(("127.0.0.1", self.port)).ok();
    }
}

/// Forwards client commands line by line; a `PUB`/`HPUB` is read whole
/// (header line and payload) so it can be dropped without breaking the stream.
fn client_to_server(client: TcpStream, mut server: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(client);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let mut words = text.split_whitespace();
        let op = words.next().unwrap_or("").to_ascii_uppercase();
        let args: Vec<&str> = words.collect();
        let mut payload = Vec::new();
        if op == "PUB" || op == "HPUB" {
            let size: usize = args.last().and_then(|n| n.parse().ok()).unwrap_or(0);
            payload.resize(size + 2, 0);
            if reader.read_exact(&mut payload).is_err() {
                break;
            }
            if let Mode::DropPublishes(prefix) = shared.mode() {
                if args.first().is_some_and(|s| s.starts_with(&prefix)) {
                    shared.dropped.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
            }
        }
        if shared.mode() == Mode::Cut || server.write_all(&line).and_then(|()| server.write_all(&payload)).is_err() {
            break;
        }
    }
    server.shutdown(Shutdown::Both).ok();
    reader.get_ref().shutdown(Shutdown::Both).ok();
}

fn server_to_client(mut server: TcpStream, mut client: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match shared.mode() {
            Mode::Cut => break,
            Mode::Deaf => continue,
            _ => {}
        }
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    client.shutdown(Shutdown::Both).ok();
    server.shutdown(Shutdown::Both).ok();
}
