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
//! On a terminal, control characters are shown, not sent ([`visible`], as
//! `cat -v` does): a job's output, or a forged record, must not be able to
//! move the cursor, retitle the window or rewrite what the operator sees.
//! Piped output stays byte for byte what the job printed; `--json` escapes
//! everything anyway.
//!
//! [`say!`]: crate::say

use std::borrow::Cow;
use std::io::{ErrorKind, IsTerminal as _, Write as _};
use std::sync::LazyLock;

use crate::exit::Exit;

/// Writes `bytes` to standard output and flushes them.
pub fn write_all(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        end(&e);
    }
}

/// Writes one line to standard output (made [`visible`] on a terminal).
pub fn line(args: std::fmt::Arguments<'_>) {
    static TERMINAL: LazyLock<bool> = LazyLock::new(|| std::io::stdout().is_terminal());
    let written = if *TERMINAL {
        let text = args.to_string();
        writeln!(std::io::stdout().lock(), "{}", visible(&text))
    } else {
        writeln!(std::io::stdout().lock(), "{args}")
    };
    if let Err(e) = written {
        end(&e);
    }
}

/// `text` with every control character but newline and tab shown as
/// `cat -v` shows it (`^[` for ESC, `^?` for DEL), and the C1 controls as
/// `\u{9b}`, so that nothing in it acts on a terminal.
pub fn visible(text: &str) -> Cow<'_, str> {
    let acts = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(acts) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if !acts(c) => out.push(c),
            '\u{7f}' => out.push_str("^?"),
            c if u32::from(c) < 0x20 => {
                out.push('^');
                out.push(char::from(u8::try_from(u32::from(c) + 0x40).expect("below 0x60")));
            }
            c => out.push_str(&c.escape_unicode().to_string()),
        }
    }
    Cow::Owned(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(visible("plain text\twith a tab\nand a newline"), "plain text\twith a tab\nand a newline");
        assert!(matches!(visible("plain"), Cow::Borrowed(_)));
        // Clear screen, retitle the window, carriage return, bell, DEL, CSI.
        assert_eq!(visible("\u{1b}[2J\u{1b}]0;owned\u{7}\r!\u{7f}\u{9b}31m"), "^[[2J^[]0;owned^G^M!^?\\u{9b}31m");
        assert_eq!(visible("ünïcode stays"), "ünïcode stays");
    }
}
