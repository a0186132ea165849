//! Standard output that ends the process quietly when its reader goes away.
//!
//! Why: `musterctl … | head` must end the way other Unix tools do. Rust
//! ignores SIGPIPE, so a write to a closed pipe is an `EPIPE` error, which
//! `println!` turns into a panic (exit 101, "failed printing to stdout").
//! Every line musterctl prints goes through [`line`] (the [`say!`] macro)
//! or [`write_all`]: a closed pipe ends the process with 0 at once, as the
//! reader asked for no more; any other write error ends it with the
//! internal-error code and the error on stderr.
//!
//! [`say!`]: crate::say

use std::io::{ErrorKind, Write as _};

use crate::exit::Exit;

/// Writes `bytes` to standard output and flushes them.
pub fn write_all(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        end(&e);
    }
}

/// Writes one line to standard output.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{args}") {
        end(&e);
    }
}

fn end(e: &std::io::Error) -> ! {
    if e.kind() == ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("musterctl: writing to standard output: {e}");
    std::process::exit(i32::from(Exit::Internal.code()));
}

/// `println!` through [`line`].
#[macro_export]
macro_rules! say {
    () => {
        $crate::stdout::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::stdout::line(format_args!($($arg)*))
    };
}
