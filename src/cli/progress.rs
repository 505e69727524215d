//! Progress on stderr. On a terminal, an indicatif bar. Elsewhere (a batch job's log, a
//! pipe), plain lines: one when a stage starts, one each time another tenth of it is done
//! or 30 s have passed since the last line, and one when it ends; each says what, how far,
//! the rate and the time left, so that a log shows a long run moving.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Seconds between plain lines when fewer than a tenth more is done.
const LINE_EVERY: Duration = Duration::from_secs(30);

/// The plain-line state of a stage.
struct Lines {
    what: String,
    len: u64,
    pos: u64,
    msg: String,
    start: Instant,
    last_line: Instant,
    /// The tenths of `len` already reported.
    tenths: u64,
}

impl Lines {
    fn line(&mut self, event: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let rate = self.pos as f64 / elapsed.max(1e-9);
        let mut s = format!("[{}] {}: {event}", clock(elapsed), self.what);
        if self.len > 0 {
            s += &format!(" {}/{} ({:.0}%)", self.pos, self.len, 100.0 * self.pos as f64 / self.len as f64);
        } else if self.pos > 0 {
            s += &format!(" {}", self.pos);
        }
        if self.pos > 0 && elapsed > 0.0 {
            s += &format!(", {}", per_second(rate));
            if self.len > self.pos && rate > 0.0 {
                s += &format!(", ETA {}", clock((self.len - self.pos) as f64 / rate));
            }
        }
        if !self.msg.is_empty() {
            s += &format!(", {}", self.msg);
        }
        let _ = writeln!(std::io::stderr(), "{s}");
        self.last_line = Instant::now();
    }

    fn moved(&mut self) {
        let tenths = (self.pos.min(self.len) * 10).checked_div(self.len).unwrap_or(0);
        if tenths > self.tenths && self.pos < self.len {
            self.tenths = tenths;
            self.line("at");
        } else if self.last_line.elapsed() >= LINE_EVERY {
            self.line("at");
        }
    }
}

/// `h:mm:ss` (or `m:ss`).
fn clock(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn per_second(rate: f64) -> String {
    if rate >= 1.0 {
        format!("{rate:.2}/s")
    } else {
        format!("{:.1} s each", 1.0 / rate.max(1e-12))
    }
}

/// A stage's progress: a bar on a terminal, plain lines elsewhere.
pub struct Progress {
    bar: Option<ProgressBar>,
    lines: Option<std::sync::Mutex<Lines>>,
}

impl Progress {
    fn with_lines(&self, f: impl FnOnce(&mut Lines)) {
        if let Some(l) = &self.lines {
            if let Ok(mut l) = l.lock() {
                f(&mut l);
            }
        }
    }

    /// Advances by `n`.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
        self.with_lines(|l| {
            l.pos += n;
            l.moved();
        });
    }

    /// Sets how far it is.
    pub fn set_position(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
        self.with_lines(|l| {
            let first = l.pos == 0 && pos > 0;
            l.pos = pos;
            if first && l.tenths == 0 && l.len > 0 {
                // A resumed stage: report the tenths already behind it as done.
                l.tenths = pos.min(l.len) * 10 / l.len;
            }
            l.moved();
        });
    }

    /// Sets the total.
    pub fn set_length(&self, len: u64) {
        if let Some(b) = &self.bar {
            b.set_length(len);
        }
        self.with_lines(|l| l.len = len);
    }

    /// Sets the message shown after the counts (loss, rate, the current layer).
    pub fn set_message(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if let Some(b) = &self.bar {
            b.set_message(msg.clone());
        }
        self.with_lines(|l| l.msg = msg);
    }

    /// Ends the stage: clears the bar, or prints the closing line.
    pub fn finish_and_clear(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        self.with_lines(|l| l.line("done"));
    }
}

/// A stage of `total` steps labelled `what`, on stderr.
pub fn bar(total: u64, what: &str) -> Progress {
    if std::io::stderr().is_terminal() {
        let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        pb.set_style(style);
        pb.set_prefix(what.to_string());
        return Progress { bar: Some(pb), lines: None };
    }
    let now = Instant::now();
    let mut lines =
        Lines { what: what.to_string(), len: total, pos: 0, msg: String::new(), start: now, last_line: now, tenths: 0 };
    lines.line("started");
    Progress { bar: None, lines: Some(std::sync::Mutex::new(lines)) }
}

/// One plain line on stderr for a stage without steps (loading, writing), so that a log
/// shows what the run is doing.
pub fn stage(what: &str) {
    if !std::io::stderr().is_terminal() {
        let _ = writeln!(std::io::stderr(), "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_and_rate_read_naturally() {
        assert_eq!(clock(5.4), "0:05");
        assert_eq!(clock(125.0), "2:05");
        assert_eq!(clock(3725.0), "1:02:05");
        assert_eq!(per_second(12.345), "12.35/s");
        assert_eq!(per_second(0.25), "4.0 s each");
    }

    #[test]
    fn lines_come_at_each_tenth() {
        let now = Instant::now();
        let mut l =
            Lines { what: "x".into(), len: 100, pos: 0, msg: String::new(), start: now, last_line: now, tenths: 0 };
        let mut printed = 0;
        for _ in 0..100 {
            let before = l.last_line;
            l.pos += 1;
            l.moved();
            printed += usize::from(l.last_line != before);
        }
        // 10%, 20%, ..., 90% (100% is the closing line's).
        assert_eq!(printed, 9);
    }
}
