//! A step's output, capped to a head and a tail.
//!
//! A step can print any amount, even gigabytes, and all of it would have to
//! fit in one run record. We keep the first `cap/2` bytes and the last
//! `cap/2` bytes: for a failing step, the start shows what it was doing and
//! the end shows why it failed. A marker line records how many bytes were cut
//! from the middle. The tail is a ring buffer, so memory stays `O(cap)`
//! whatever the output size.
//!
//! [`OutputReader`] reads a child's stdout and stderr at the same time, so a
//! child that fills one pipe while we wait on the other cannot deadlock.
//! Each piece read also goes to the run's live output when it has one
//! ([`crate::live::Tee`], which never waits), and to the step's kept file
//! when its job keeps full output ([`crate::kept::KeepFile`]): tees of what
//! is captured, not second readers.
//! [`OutputCapture`] on its own also cuts finished outputs down when a run
//! record must shrink to fit (`crate::runner::fit_record`), so both cuts look
//! the same.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::task::JoinHandle;

use super::mask::Masker;
use crate::kept::{Keep, KeepFile, Kept};
use crate::live::Tee;
use muster_shared::output::Pipe;

/// Size of each read from the stdout and stderr pipes.
const READ_CHUNK: usize = 64 * 1024;

/// Output capture capped at `cap` bytes: the first `cap / 2` bytes (the head)
/// and the last `cap - cap / 2` bytes (the tail).
///
/// Once the head is full, later bytes go into a ring buffer. It keeps only the
/// newest `cap - cap / 2` bytes. Memory use is `O(cap)` whatever the amount of
/// input. [`finish`](Self::finish) joins head and tail. If bytes were dropped,
/// it puts a marker line between them, like `\n[... 123456 bytes cut ...]\n`.
/// The marker does not count toward the cap.
#[derive(Debug, Clone)]
pub struct OutputCapture {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl OutputCapture {
    /// An empty capture that keeps at most `cap` bytes.
    pub fn new(cap: usize) -> Self {
        let head_cap = cap / 2;
        OutputCapture { head_cap, tail_cap: cap - head_cap, head: Vec::new(), tail: VecDeque::new(), total: 0 }
    }

    /// Adds bytes to the end of the output.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.head_cap {
            let n = (self.head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.is_empty() {
            return;
        }
        if data.len() >= self.tail_cap {
            // The chunk alone fills the tail: keep only its last tail_cap bytes.
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
        } else {
            // Drop the oldest bytes first, so the buffer never grows past tail_cap.
            let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// Total bytes pushed so far, kept or not.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// Bytes dropped so far.
    pub fn cut_bytes(&self) -> u64 {
        self.total - self.head.len() as u64 - self.tail.len() as u64
    }

    /// The captured text (lossy UTF-8), and the number of bytes cut from the middle.
    pub fn finish(self) -> (String, u64) {
        let cut = self.cut_bytes();
        let (a, b) = self.tail.as_slices();
        if cut == 0 {
            let mut all = self.head;
            all.extend_from_slice(a);
            all.extend_from_slice(b);
            return (String::from_utf8_lossy(&all).into_owned(), 0);
        }
        let mut tail = Vec::with_capacity(a.len() + b.len());
        tail.extend_from_slice(a);
        tail.extend_from_slice(b);
        let mut out = String::from_utf8_lossy(&self.head).into_owned();
        out.push_str(&format!("\n[... {cut} bytes cut ...]\n"));
        out.push_str(&String::from_utf8_lossy(&tail));
        (out, cut)
    }
}

/// A task that reads a child's stdout and stderr into one [`OutputCapture`],
/// in the order data arrives, until both reach EOF (or an error). The task
/// is aborted if this is dropped before it finishes.
#[derive(Debug)]
pub(super) struct OutputReader {
    task: JoinHandle<()>,
    capture: Arc<Mutex<OutputCapture>>,
    keep: Arc<Mutex<Option<KeepFile>>>,
}

impl OutputReader {
    /// Starts reading the pipes into a capture that keeps at most `cap`
    /// bytes, into `live` and into a file for `keep` if given.
    pub(super) fn start(
        stdout: Option<ChildStdout>,
        stderr: Option<ChildStderr>,
        cap: usize,
        live: Option<Tee>,
        keep: Option<&Keep>,
        secrets: &[String],
    ) -> Self {
        let capture = Arc::new(Mutex::new(OutputCapture::new(cap)));
        let keep = Arc::new(Mutex::new(keep.map(KeepFile::create)));
        let masks = [(); 2].map(|()| Masker::new(secrets.iter().map(String::as_str)).map(Mutex::new));
        let sinks = Sinks { capture: Arc::clone(&capture), live, keep: Arc::clone(&keep), masks };
        let task = tokio::spawn(pump_output(stdout, stderr, sinks));
        OutputReader { task, capture, keep }
    }

    /// Waits up to `limit` for both pipes to close. Returns whether they did.
    pub(super) async fn finished_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.task).await.is_ok()
    }

    /// Stops reading: whatever still holds the pipes is not waited for.
    pub(super) fn abandon(&self) {
        self.task.abort();
    }

    /// The output read so far (see [`OutputCapture::finish`]), and the
    /// kept file's account.
    pub(super) fn finish(self) -> (String, u64, Option<Kept>) {
        let kept = self.keep.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take().map(KeepFile::finish);
        let mut guard = self.capture.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (output, cut) = std::mem::replace(&mut *guard, OutputCapture::new(0)).finish();
        (output, cut, kept)
    }
}

impl Drop for OutputReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads stdout and stderr at the same time, in the order data arrives, until
/// both reach EOF (or an error).
async fn pump_output(mut stdout: Option<ChildStdout>, mut stderr: Option<ChildStderr>, sinks: Sinks) {
    let mut out_buf = vec![0u8; READ_CHUNK];
    let mut err_buf = vec![0u8; READ_CHUNK];
    let push = |pipe: Pipe, data: &[u8]| sinks.push(pipe, data);
    while stdout.is_some() || stderr.is_some() {
        // read() is cancel safe: data is never lost when the other branch wins.
        tokio::select! {
            r = read_opt(&mut stdout, &mut out_buf) => match r {
                Ok(n) if n > 0 => push(Pipe::Stdout, &out_buf[..n]),
                _ => {
                    sinks.end(Pipe::Stdout);
                    stdout = None;
                }
            },
            r = read_opt(&mut stderr, &mut err_buf) => match r {
                Ok(n) if n > 0 => push(Pipe::Stderr, &err_buf[..n]),
                _ => {
                    sinks.end(Pipe::Stderr);
                    stderr = None;
                }
            },
        }
    }
}

/// Where each piece read goes: the head-and-tail capture, the live
/// output, the kept file.
struct Sinks {
    capture: Arc<Mutex<OutputCapture>>,
    live: Option<Tee>,
    keep: Arc<Mutex<Option<KeepFile>>>,
    /// Per pipe (stdout, stderr): hides the run's secret values before any
    /// sink sees the output.
    masks: [Option<Mutex<Masker>>; 2],
}

impl Sinks {
    fn mask(&self, pipe: Pipe) -> Option<std::sync::MutexGuard<'_, Masker>> {
        let i = usize::from(pipe == Pipe::Stderr);
        self.masks[i].as_ref().map(|m| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn push(&self, pipe: Pipe, data: &[u8]) {
        match self.mask(pipe) {
            Some(mut m) => {
                let masked = m.push(data);
                drop(m);
                self.send(pipe, &masked);
            }
            None => self.send(pipe, data),
        }
    }

    /// A pipe ended: what its masker held back goes out.
    fn end(&self, pipe: Pipe) {
        let rest = self.mask(pipe).map(|mut m| m.finish());
        if let Some(rest) = rest.filter(|r| !r.is_empty()) {
            self.send(pipe, &rest);
        }
    }

    fn send(&self, pipe: Pipe, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.capture.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(data);
        if let Some(live) = &self.live {
            live.offer(pipe, data);
        }
        if let Some(keep) = self.keep.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
            keep.push(data);
        }
    }
}

/// Reads from `reader`, or waits forever if it is closed (`None`).
async fn read_opt<R: AsyncRead + Unpin>(reader: &mut Option<R>, buf: &mut [u8]) -> io::Result<usize> {
    match reader {
        Some(r) => r.read(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_under_cap_keeps_everything() {
        let mut c = OutputCapture::new(10);
        c.push(b"hello");
        c.push(b"");
        c.push(b"world");
        assert_eq!(c.total_bytes(), 10);
        assert_eq!(c.finish(), ("helloworld".to_owned(), 0));
    }

    #[test]
    fn capture_over_cap_keeps_head_and_tail() {
        let data: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
        // Push in uneven chunks, some larger than the tail, some smaller.
        for chunk_size in [1usize, 3, 7, 64, 999, 5000] {
            let mut c = OutputCapture::new(100);
            for chunk in data.chunks(chunk_size) {
                c.push(chunk);
            }
            let (text, cut) = c.finish();
            assert_eq!(cut, 900, "chunk size {chunk_size}");
            let expected = format!(
                "{}\n[... 900 bytes cut ...]\n{}",
                std::str::from_utf8(&data[..50]).unwrap(),
                std::str::from_utf8(&data[950..]).unwrap()
            );
            assert_eq!(text, expected, "chunk size {chunk_size}");
        }
    }

    #[test]
    fn capture_odd_and_zero_caps() {
        let mut c = OutputCapture::new(5);
        c.push(b"0123456789");
        assert_eq!(c.finish(), ("01\n[... 5 bytes cut ...]\n789".to_owned(), 5));

        let mut c = OutputCapture::new(0);
        c.push(b"abc");
        c.push(b"de");
        assert_eq!(c.finish(), ("\n[... 5 bytes cut ...]\n".to_owned(), 5));

        let mut c = OutputCapture::new(0);
        c.push(b"");
        assert_eq!(c.finish(), (String::new(), 0));
    }

    #[test]
    fn capture_memory_stays_bounded() {
        let mut c = OutputCapture::new(1000);
        let chunk = [b'x'; 300];
        for _ in 0..10_000 {
            c.push(&chunk);
            assert!(c.head.len() + c.tail.len() <= 1000);
        }
        assert_eq!(c.cut_bytes(), 3_000_000 - 1000);
    }

    #[test]
    fn capture_is_lossy_utf8() {
        let mut c = OutputCapture::new(100);
        c.push(b"ok \xff\xfe end");
        assert_eq!(c.finish().0, "ok \u{fffd}\u{fffd} end");
    }
}
